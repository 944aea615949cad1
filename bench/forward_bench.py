"""Hidden-states forward of a Qwen2.5-0.5B-shaped model: prorank-jax vs transformers, same weights.

    python bench/forward_bench.py --batch 8 --length 256 --threads 2

Prints compile time, median forward seconds and tokens/s of both, and the max
difference of their final hidden states.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bench.common import machine_line, qwen25_05b_config, random_hf_folder, timed
from prorank_jax import hf, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers for a quick run (default 24)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cache", default="runs/bench/qwen25-05b-random")
    args = parser.parse_args()

    import torch
    from transformers import AutoModel

    torch.set_num_threads(args.threads)
    config = qwen25_05b_config(args.layers)
    folder = random_hf_folder(Path(args.cache + (f"-{args.layers}l" if args.layers else "")), config)
    config, params = hf.load(folder)
    params = jax.device_put(params)
    rng = np.random.RandomState(0)
    ids = rng.randint(0, config.vocab_size, (args.batch, args.length)).astype(np.int32)
    mask = np.ones_like(ids)

    forward = jax.jit(lambda p, i, m: model.forward_hidden(p, config, i, m)[0])
    start = time.perf_counter()
    compiled = forward.lower(params, ids, mask).compile()
    compile_s = time.perf_counter() - start
    ours_out = np.asarray(compiled(params, ids, mask))
    ours_s = timed(lambda: compiled(params, ids, mask).block_until_ready(), args.repeats)

    torch_model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)
    with torch.inference_mode():
        torch_out = torch_model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state.numpy()
        torch_s = timed(lambda: torch_model(input_ids=t_ids, attention_mask=t_mask), args.repeats)

    tokens = args.batch * args.length
    print(f"machine: {machine_line()}, torch {torch.__version__} ({args.threads} threads)")
    print(f"model: Qwen2.5-0.5B shape, {config.num_hidden_layers} layers, {model.count_params(params)/1e6:.0f}M params, "
          f"float32, batch {args.batch} x {args.length} tokens")
    print(f"jax compile time: {compile_s:.1f} s")
    print("| implementation | median forward (s) | tokens/s |")
    print("|---|---|---|")
    print(f"| prorank-jax (jit, XLA CPU) | {ours_s:.3f} | {tokens / ours_s:,.0f} |")
    print(f"| transformers Qwen2Model (torch) | {torch_s:.3f} | {tokens / torch_s:,.0f} |")
    print(f"max |hidden difference|: {np.abs(ours_out - torch_out).max():.2e} "
          f"(hidden scale {np.abs(torch_out).max():.1f})")


if __name__ == "__main__":
    main()
