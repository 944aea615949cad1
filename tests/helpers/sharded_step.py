"""Run one train step on a (2, 2, 2) mesh of 8 simulated CPU devices and on 1 device.

Invoked as a subprocess (XLA_FLAGS must be set before JAX starts):
    python -m tests.helpers.sharded_step STAGE
Prints one JSON line: the max abs difference of params and of metrics between the two.
STAGE names a batch+loss builder in BUILDERS; each returns (config, params, loss_fn, batch).
"""

from __future__ import annotations

import functools
import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from prorank_jax import model, training  # noqa: E402
from prorank_jax import sharding as shd  # noqa: E402

TINY = model.ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)


def grpo_case():
    from rl.config import GRPOConfig
    from rl.train import grpo_loss

    grpo = GRPOConfig(group_size=4, max_completion_tokens=3, beta=0.04)
    rng = np.random.RandomState(0)
    n, p, t = 16, 12, 3
    prompt_mask = np.ones((n, p), np.int32)
    prompt_mask[::3, :4] = 0
    completion_mask = np.ones((n, t), np.int32)
    completion_mask[1::4, 2:] = 0
    batch = {
        "prompt_ids": rng.randint(0, 64, (n, p)).astype(np.int32),
        "prompt_mask": prompt_mask,
        "completion_ids": rng.randint(0, 64, (n, t)).astype(np.int32),
        "completion_mask": completion_mask,
        "advantages": rng.randn(n).astype(np.float32),
        "ref_logp": (-4.0 + 0.3 * rng.randn(n, t)).astype(np.float32),
        "old_logp": (-4.1 + 0.3 * rng.randn(n, t)).astype(np.float32),
    }
    return functools.partial(grpo_loss, config=TINY, grpo=grpo), batch


BUILDERS = {"grpo": grpo_case}


def one_step(mesh, loss_fn, batch, params):
    tx = training.make_optimizer(training.OptimizerConfig(learning_rate=1e-2, warmup_steps=0), 10)
    abstract = jax.eval_shape(lambda p: training.init_train_state(p, tx), params)
    sharding = training.state_shardings(abstract, tx, mesh)
    state = jax.jit(lambda p: training.init_train_state(p, tx), out_shardings=sharding)(
        jax.device_put(params, sharding.params))
    step = training.make_train_step(loss_fn, tx, mesh=mesh, state_sharding=sharding, batch_example=batch)
    state, metrics = step(state, shd.shard_batch(batch, mesh))
    state, metrics = step(state, shd.shard_batch(batch, mesh))  # second step exercises Adam's moments
    placed = {str(leaf.sharding.spec) for leaf in jax.tree_util.tree_leaves(state.params)}
    return jax.device_get(state.params), jax.device_get(metrics), placed


def main(stage: str) -> None:
    loss_fn, batch = BUILDERS[stage]()
    params = jax.device_get(model.init_params(TINY, jax.random.key(0), init_std=0.1))
    big = shd.make_mesh(2, 2, 2)
    one = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    p8, m8, specs = one_step(big, loss_fn, batch, params)
    p1, m1, _ = one_step(one, loss_fn, batch, params)
    param_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(p8),
                                                                  jax.tree_util.tree_leaves(p1)))
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(jax.tree_util.tree_leaves(p1),
                                                            jax.tree_util.tree_leaves(params)))
    metric_diff = {k: abs(float(m8[k]) - float(m1[k])) for k in m1}
    print(json.dumps({"devices": jax.device_count(), "param_diff": param_diff, "params_moved": moved,
                      "metric_diff": metric_diff, "loss": float(m1["loss"]), "specs": sorted(specs)}))


if __name__ == "__main__":
    main(sys.argv[1])
