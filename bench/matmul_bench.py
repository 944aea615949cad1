"""Float32 matmul rate of XLA (jax) and torch on this machine, at the MLP shapes of Qwen2.5-0.5B.

    python -m bench.matmul_bench --threads 2

Both sides run the same chain: `repeats` times x <- tanh((x @ W_up) @ W_down) with
x [tokens, 896], W_up [896, 4864], W_down [4864, 896] (the gate/up and down projections of
one Qwen2.5-0.5B layer over `tokens` rows). Each product feeds the next, so no side can
skip or merge work. This is the ceiling on the model FLOPs per second either framework can
reach on the CPU, which is what decides how far the Reranker can beat a transformers
forward that does more FLOPs (see bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import os
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2304, help="rows of x (default 2304 = 8 prompts x 288 tokens)")
    parser.add_argument("--repeats", type=int, default=6, help="up/down pairs per timed chain")
    parser.add_argument("--passes", type=int, default=3, help="timed chains per side; the fastest is kept")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    hidden, inter = 896, 4864
    rng = np.random.RandomState(0)
    x = rng.randn(args.tokens, hidden).astype(np.float32)
    up = (rng.randn(hidden, inter) / np.sqrt(hidden)).astype(np.float32)
    down = (rng.randn(inter, hidden) / np.sqrt(inter)).astype(np.float32)

    @jax.jit
    def jax_chain(x, up, down):
        for _ in range(args.repeats):
            x = jnp.tanh((x @ up) @ down)
        return x

    def torch_chain(x, up, down):
        with torch.inference_mode():
            for _ in range(args.repeats):
                x = torch.tanh((x @ up) @ down)
        return x

    jx, jup, jdown = jnp.asarray(x), jnp.asarray(up), jnp.asarray(down)
    tx, tup, tdown = torch.from_numpy(x), torch.from_numpy(up), torch.from_numpy(down)
    jax_chain(jx, jup, jdown).block_until_ready()  # compile
    torch_chain(tx, tup, tdown)  # warm-up
    flops = args.repeats * 2 * (2 * args.tokens * hidden * inter)
    best = {"jax": float("inf"), "torch": float("inf")}
    for _ in range(args.passes):  # alternate so both sides see the same machine state
        start = time.perf_counter()
        jax_chain(jx, jup, jdown).block_until_ready()
        best["jax"] = min(best["jax"], time.perf_counter() - start)
        start = time.perf_counter()
        torch_chain(tx, tup, tdown)
        best["torch"] = min(best["torch"], time.perf_counter() - start)
    diff = float(np.max(np.abs(np.asarray(jax_chain(jx, jup, jdown)) - torch_chain(tx, tup, tdown).numpy())))
    print(f"jax {jax.__version__}, torch {torch.__version__}, {args.threads} threads, "
          f"x [{args.tokens}, {hidden}], {flops / 1e9:.0f} GFLOP per chain, max abs diff {diff:.1e}")
    print("| implementation | best chain (s) | GFLOP/s |")
    print("|---|---|---|")
    for name, label in (("jax", "XLA (jax.jit)"), ("torch", "torch")):
        print(f"| {label} | {best[name]:.3f} | {flops / best[name] / 1e9:.0f} |")


if __name__ == "__main__":
    main()
