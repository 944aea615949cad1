"""Run one train step on a (2, 2, 2) mesh of 8 simulated CPU devices and on 1 device.

Invoked as a subprocess (XLA_FLAGS must be set before JAX starts):
    python -m tests.helpers.sharded_step STAGE
Prints one JSON line: the max abs difference of params and of metrics between the two.
STAGE names a batch+loss builder in BUILDERS; each returns (config, params, loss_fn, batch).
"""

from __future__ import annotations

import functools
import json
import sys

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
    prompts = n // grpo.group_size  # each prompt row is shared by its group of 4 completions
    prompt_mask = np.ones((prompts, p), np.int32)
    prompt_mask[::3, :4] = 0
    completion_mask = np.ones((n, t), np.int32)
    completion_mask[1::4, 2:] = 0
    batch = {
        "prompt_ids": rng.randint(0, 64, (prompts, p)).astype(np.int32),
        "prompt_mask": prompt_mask,
        "completion_ids": rng.randint(0, 64, (n, t)).astype(np.int32),
        "completion_mask": completion_mask,
        "advantages": rng.randn(n).astype(np.float32),
        "ref_logp": (-4.0 + 0.3 * rng.randn(n, t)).astype(np.float32),
        "old_logp": (-4.1 + 0.3 * rng.randn(n, t)).astype(np.float32),
    }
    return functools.partial(grpo_loss, config=TINY, grpo=grpo), batch


def score_case():
    from scoring.losses import ScoreLossConfig
    from scoring.train import score_loss

    loss_config = ScoreLossConfig(pointwise_weight=0.5, listwise_weight=1.0, pairwise_weight=0.5,
                                  label_mode="graded", max_grade=3)
    rng = np.random.RandomState(1)
    b, n, length = 8, 3, 10
    attention_mask = np.ones((b, n, length), np.int32)
    attention_mask[::2, :, :3] = 0  # left padding
    attention_mask[1, 2] = 0  # a masked negative slot
    attention_mask[7] = 0  # a padding row
    doc_mask = attention_mask.max(axis=-1)
    example_mask = np.ones((b,), np.int32)
    example_mask[7] = 0
    labels = np.array([[3, 1, 0]] * b, np.int32) * doc_mask
    batch = {
        "input_ids": rng.randint(0, 64, (b, n, length)).astype(np.int32),
        "attention_mask": attention_mask,
        "labels": labels,
        "doc_mask": doc_mask,
        "example_mask": example_mask,
    }
    return functools.partial(score_loss, config=TINY, loss_config=loss_config, yes_id=17, no_id=42), batch


BUILDERS = {"grpo": grpo_case, "score": score_case}


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
    if jax.device_count() != 8:
        raise SystemExit("run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (see tests/rl/test_train_step.py)")
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
