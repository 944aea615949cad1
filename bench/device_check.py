"""One-shot accelerator check (issue 13): parity and throughput on the Qwen2.5-0.5B shape.

    PYTHONPATH=. python bench/device_check.py --out bench/device_check.md   (or bench/device_check.sh)

Runs, on the default backend (a GPU or TPU; it refuses to run on CPU unless --allow-cpu):
  1. parity: reranking scores of a Qwen2.5-0.5B-shaped random model in float32 and in
     bfloat16 on the device against float32 on the host CPU (max |difference|);
  2. Reranker pairs/s with default settings (bf16, batch 32, all local devices) on
     real-length documents (~200 tokens of text, 8 per query, rank()-like workload);
  3. the stage-2 train step's tokens/s and MFU (model FLOPs of bench/score_step_bench.py
     over the device's measured bf16 matmul rate);
  4. GRPO samples/s: rollout (32 prompts x G = 8, 4 new tokens) + update.
Prints one Markdown table and writes it to --out. Budget: well under 10 minutes on one GPU
(compiles included). --layers shrinks the model for a smoke run.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import machine_line, qwen25_05b_config, timed
from bench.score_step_bench import NO_ID, YES_ID, make_batch, model_flops_per_step
from prorank_jax import model, training
from prorank_jax import sharding as shd


def peak_matmul_flops(dtype, n: int = 8192, repeats: int = 5) -> float:
    a = jnp.ones((n, n), dtype)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    return 2 * n**3 / timed(lambda: dot(a, a).block_until_ready(), repeats)


def parity(config, params, rows: int = 8, length: int = 256) -> dict[str, float]:
    from prorank_jax.score import rerank_scores

    rng = np.random.RandomState(0)
    ids = rng.randint(0, config.vocab_size, (rows, length)).astype(np.int32)
    mask = np.ones((rows, length), np.int32)
    cpu = jax.devices("cpu")[0]
    score = lambda cfg, p: np.asarray(jax.jit(lambda p, i, m: rerank_scores(p, cfg, i, m, YES_ID, NO_ID))(p, ids, mask))  # noqa: E731
    with jax.default_device(cpu):
        reference = score(config, jax.device_put(params, cpu))
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = config.replace(dtype=dtype, param_dtype=dtype)
        cast = jax.tree_util.tree_map(lambda x: jnp.asarray(x, model.dtype_of(dtype)), params)
        out[f"parity {dtype} max |score diff| vs CPU float32"] = float(np.max(np.abs(score(cfg, cast) - reference)))
    out["parity score scale (max |score|)"] = float(np.max(np.abs(reference)))
    return out


def reranker_pairs_per_s(config, params, tokenizer, queries: int = 64, docs_per_query: int = 8) -> dict[str, float]:
    from scoring.reranker import Reranker

    words = "the of and a to in is was for on that with as by it from at his an were are which be this".split()
    rng = np.random.RandomState(0)
    qs, ds = [], []
    for q in range(queries):
        for _ in range(docs_per_query):
            qs.append(f"query {q} " + " ".join(rng.choice(words, 8)))
            ds.append(" ".join(rng.choice(words, int(rng.randint(120, 280)))))
    reranker = Reranker(config, params, tokenizer, show_progress=False)
    reranker.predict(qs, ds)  # compiles every shape it meets
    seconds = timed(lambda: reranker.predict(qs, ds), 2)
    label = f"reranker pairs/s ({reranker.config.dtype}, batch {reranker.batch_size}, {reranker.mesh.size} devices)"
    return {label: len(qs) / seconds}


def score_step(config, params, groups: int = 8, negatives: int = 7, length: int = 512) -> dict[str, float]:
    from scoring.losses import ScoreLossConfig
    from scoring.train import score_loss

    cfg = config.replace(dtype="bfloat16", param_dtype="float32", remat="full")
    mesh = shd.make_mesh(data=-1)
    tx = training.make_optimizer(training.OptimizerConfig(), 1000)
    abstract = jax.eval_shape(lambda p: training.init_train_state(p, tx), params)
    sharding = training.state_shardings(abstract, tx, mesh)
    state = jax.jit(lambda p: training.init_train_state(p, tx), out_shardings=sharding)(params)
    batch = make_batch(groups * jax.device_count(), negatives, length, cfg.vocab_size)
    loss_fn = functools.partial(score_loss, config=cfg, loss_config=ScoreLossConfig(), yes_id=YES_ID, no_id=NO_ID)
    step = training.make_train_step(loss_fn, tx, mesh=mesh, state_sharding=sharding, batch_example=batch)
    placed = shd.shard_batch(batch, mesh)
    holder = {"state": state}

    def one():
        holder["state"], metrics = step(holder["state"], placed)
        jax.block_until_ready(metrics["loss"])

    one()
    seconds = timed(one, 3)
    tokens = batch["input_ids"].size
    peak = peak_matmul_flops(jnp.bfloat16, n=1024 if jax.default_backend() == "cpu" else 8192)
    mfu = model_flops_per_step(cfg, tokens, length) / seconds / (peak * jax.device_count())
    return {"stage-2 step tokens/s (bf16, remat full)": tokens / seconds, "stage-2 step MFU (vs measured bf16 matmul)": mfu}


def grpo_samples_per_s(config, params, tokenizer, prompts: int = 32, group: int = 8) -> dict[str, float]:
    from prorank_jax.prompts import RerankPrompt, left_pad
    from rl.config import GRPOConfig
    from rl.rollout import rollout, sampling_config
    from rl.train import grpo_loss

    cfg = config.replace(dtype="bfloat16", param_dtype="float32")
    grpo = GRPOConfig(group_size=group, max_completion_tokens=4, beta=0.04)
    prompt = RerankPrompt(tokenizer, 512, cfg.max_position_embeddings)
    rng = np.random.RandomState(1)
    encoded = prompt.encode_batch([f"query {i}" for i in range(prompts)],
                                  [" ".join(["word"] * int(rng.randint(100, 400))) for _ in range(prompts)])
    width = -(-max(len(e.input_ids) for e in encoded) // 8) * 8
    ids, mask = left_pad([e.input_ids for e in encoded], width, prompt.pad_id)
    batch = {"input_ids": ids, "attention_mask": mask, "label": np.arange(prompts) % 2}
    mesh = shd.make_mesh(data=-1)
    tx = training.make_optimizer(training.OptimizerConfig(), 1000)
    abstract = jax.eval_shape(lambda p: training.init_train_state(p, tx), params)
    sharding = training.state_shardings(abstract, tx, mesh)
    state = jax.jit(lambda p: training.init_train_state(p, tx), out_shardings=sharding)(params)
    sampler = sampling_config(grpo, tokenizer, cfg)
    step = None

    def one(key):
        nonlocal step, state
        train_batch, _ = rollout(state.params, state.params, cfg, batch, key, grpo, sampler, tokenizer)
        if step is None:
            step = training.make_train_step(functools.partial(grpo_loss, config=cfg, grpo=grpo), tx, mesh=mesh,
                                            state_sharding=sharding, batch_example=train_batch)
        state, metrics = step(state, shd.shard_batch(train_batch, mesh))
        jax.block_until_ready(metrics["loss"])

    one(jax.random.key(0))
    keys = iter(range(1, 100))
    seconds = timed(lambda: one(jax.random.key(next(keys))), 3)
    return {"GRPO samples/s (rollout + update, bf16)": prompts * group / seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=None, help="fewer layers for a smoke run (default 24)")
    parser.add_argument("--out", default="bench/device_check.md")
    parser.add_argument("--allow-cpu", action="store_true", help="run on CPU anyway (smoke test of the script)")
    parser.add_argument("--only", nargs="*", default=["parity", "reranker", "score", "grpo"])
    parser.add_argument("--smoke", action="store_true", help="tiny workloads: checks the script runs, measures nothing")
    args = parser.parse_args(argv)
    if jax.default_backend() == "cpu" and not args.allow_cpu:
        raise SystemExit("device_check: no accelerator found (jax.default_backend() == 'cpu'); see the header")
    from prorank_jax.bundled import bundled_tokenizer_dir
    from prorank_jax.pretrained import load_tokenizer

    config = qwen25_05b_config(args.layers)
    # The bundled tokenizer stands in for Qwen's (no download): its ids index the same
    # vocabulary size, prompts are as long as the text makes them.
    tokenizer = load_tokenizer(bundled_tokenizer_dir(), config)
    params = model.init_params(config, jax.random.key(0))
    rows: dict[str, float] = {}
    started = time.perf_counter()
    small = args.smoke
    checks = {"parity": lambda: parity(config, params, length=32 if small else 256),
              "reranker": lambda: reranker_pairs_per_s(config, params, tokenizer, *((2, 2) if small else ())),
              "score": lambda: score_step(config, params, *((1, 1, 64) if small else ())),
              "grpo": lambda: grpo_samples_per_s(config, params, tokenizer, *((2, 2) if small else ()))}
    for name in args.only:
        rows.update(checks[name]())
    lines = [f"machine: {machine_line()}", f"model: Qwen2.5-0.5B shape, {config.num_hidden_layers} layers, random",
             f"wall time: {time.perf_counter() - started:.0f} s", "", "| check | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4g} |" for k, v in rows.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
