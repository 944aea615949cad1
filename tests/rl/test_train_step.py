"""The GRPO update: sharded over 8 simulated devices equals one device; guards work."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from prorank_jax import model, training
from prorank_jax import sharding as shd
from tests.helpers.schedules import learning_rate_at
from tests.helpers.sharded_step import TINY, grpo_case
from tests.helpers.env import xla_flags

ROOT = Path(__file__).resolve().parents[2]


def run_sharded(stage: str) -> dict:
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices=8), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "tests.helpers.sharded_step", stage], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_grpo_step_on_2x2x2_mesh_equals_single_device():
    result = run_sharded("grpo")
    assert result["devices"] == 8
    assert result["params_moved"] > 1e-3  # the step really updates
    assert result["param_diff"] <= 1e-5
    assert max(result["metric_diff"].values()) <= 1e-5
    assert any("tensor" in s for s in result["specs"]) and any("fsdp" in s for s in result["specs"])


def test_non_finite_loss_skips_the_update_and_counts_it():
    loss_fn, batch = grpo_case()
    params = model.init_params(TINY, jax.random.key(0), init_std=0.1)
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    tx = training.make_optimizer(training.OptimizerConfig(learning_rate=1e-2, warmup_steps=0), 10)
    abstract = jax.eval_shape(lambda p: training.init_train_state(p, tx), params)
    sharding = training.state_shardings(abstract, tx, mesh)
    poisoned = dict(batch, advantages=np.full_like(batch["advantages"], np.nan))
    step = training.make_train_step(loss_fn, tx, mesh=mesh, state_sharding=sharding, batch_example=batch,
                                    donate=False)
    state = training.init_train_state(params, tx)
    bad_state, metrics = step(state, poisoned)
    assert int(bad_state.skipped) == 1 and float(metrics["update_skipped"]) == 1.0
    for a, b in zip(jax.tree_util.tree_leaves(bad_state.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(a, b)
    good_state, metrics = step(bad_state, batch)
    assert int(good_state.skipped) == 1 and float(metrics["update_skipped"]) == 0.0
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(good_state.params))


def test_optimizer_schedule_warmup_then_cosine():
    cfg = training.OptimizerConfig(learning_rate=1.0, warmup_steps=4, end_lr_ratio=0.1)
    assert learning_rate_at(cfg, 20, 0) == 0.0
    assert learning_rate_at(cfg, 20, 2) == 0.5
    assert abs(learning_rate_at(cfg, 20, 4) - 1.0) < 1e-9
    assert abs(learning_rate_at(cfg, 20, 20) - 0.1) < 1e-9
    # The logged formula is the optimizer's: one SGD-like probe of adamw's schedule.
    import optax

    sched = optax.warmup_cosine_decay_schedule(0.0, 1.0, 4, 20, 0.1)
    for step in (0, 2, 4, 9, 15, 20):
        assert abs(float(sched(step)) - learning_rate_at(cfg, 20, step)) < 1e-6
