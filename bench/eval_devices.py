"""`evaluate` with the Reranker on one device and on all local devices: per-device batch
rows and the compiled programs (issue 13). On simulated CPU devices this is a description
of the split, not a speed measurement (see bench/RESULTS.md).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu PYTHONPATH=. python bench/eval_devices.py
"""

from __future__ import annotations

import json
import time

import jax

from prorank_jax import model
from prorank_jax.config import ModelConfig
from prorank_jax.data import bundled_data_dir, load_beir
from prorank_jax.bundled import bundled_tokenizer_dir
from prorank_jax.pretrained import load_tokenizer
from scoring.evaluate import evaluate
from scoring.reranker import Reranker


def main() -> None:
    config = ModelConfig.from_hf(bundled_data_dir() / "tiny_model.json")
    params = model.init_params(config, jax.random.key(0), init_std=0.1)
    tokenizer = load_tokenizer(bundled_tokenizer_dir(), config)
    data = load_beir(bundled_data_dir(), "test")
    for devices in (jax.local_devices()[:1], jax.local_devices()):
        reranker = Reranker(config, params, tokenizer, max_length=112, show_progress=False, devices=devices)
        start = time.perf_counter()
        report = evaluate(reranker, data, "test", top_k=20)
        seconds = time.perf_counter() - start
        rows = sorted({s[0] for s in reranker.compiled_shapes} | {s[0] for s in reranker.compiled_extend_shapes}
                      | {s[0] for s in reranker.compiled_prefix_shapes})
        n = len(devices)
        print(json.dumps({
            "devices": n, "pairs": report.n_pairs, "nDCG@10": round(report.metrics["reranked"]["nDCG@10"], 6),
            "pack_tokens": reranker.pack_tokens,
            "whole_prompt_programs": sorted(reranker.compiled_shapes),
            "prefill_programs": sorted(reranker.compiled_prefix_shapes),
            "extend_programs": sorted(reranker.compiled_extend_shapes),
            "rows_per_device": {r: (r // n if r % n == 0 else f"{r} (replicated)") for r in rows},
            "seconds_incl_compile": round(seconds, 1),
        }))


if __name__ == "__main__":
    main()
