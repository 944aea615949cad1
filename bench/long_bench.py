"""rank() at real lengths: time and peak memory of the token-budget path against the old one.

    python -m bench.long_bench --workload long  --layers 2     # 16 documents cut to 8,192 tokens
    python -m bench.long_bench --workload short                # 32 documents of about 512 tokens

Both sides rank the same documents with the same random Qwen2.5-0.5B-shaped model (built
with our init_params, saved once as an HF folder), each in its own subprocess so that its
peak resident memory (VmHWM) is its own:

* after: the Reranker's defaults (max_batch_tokens for the platform, attn_implementation
  "auto": blockwise attention above 1,024 x 1,024 scores per row on CPU).
* before: the previous behaviour: batches of batch_size rows whatever their length
  (max_batch_tokens=10**12) and XLA attention over the whole [rows, heads, L, L] score
  matrix (attn_implementation="xla"). `--sides after` skips it where it cannot fit: its
  score matrix alone is printed (the `before` estimate line).

Documents are runs of the bundled corpus's documents cut to the target token count with the
bundled tokenizer (`--tokenizer DIR` takes another, e.g. Qwen's real tokenizer.json folder).
Each side calls rank() `--calls` times: the first includes compilation, the last is steady
state (with --calls 1 both columns are the one call, compilation included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

WORKLOADS = {"long": (16, 8192), "short": (32, 512)}  # documents, tokens per document


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="short")
    parser.add_argument("--sides", default="before,after", help="comma-separated: before, after")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers for a quick run (default 24)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the bundled tiny one)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--calls", type=int, default=2, help="rank() calls per side; the first compiles (default 2)")
    parser.add_argument("--cache", default="runs/bench/qwen25-05b-random")
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)  # internal: run one side here
    return parser.parse_args(argv)


def documents(tokenizer, n: int, tokens: int) -> list[str]:
    """n documents of `tokens` tokens each: consecutive corpus documents, cut at that count."""
    from prorank_jax.data import bundled_data_dir, load_corpus

    corpus = list(load_corpus(bundled_data_dir() / "corpus.jsonl").values())
    ids = tokenizer(" ".join(corpus), add_special_tokens=False)["input_ids"]
    while len(ids) < n * tokens:
        ids = ids + ids
    return [tokenizer.decode(ids[i * tokens:(i + 1) * tokens]).strip() for i in range(n)]


def model_folder(args) -> Path:
    from bench.common import qwen25_05b_config, random_hf_folder
    from prorank_jax import hf
    from prorank_jax.data import bundled_tokenizer_dir

    folder = Path(args.cache + (f"-{args.layers}l" if args.layers else ""))
    random_hf_folder(folder, qwen25_05b_config(args.layers), seed=0)
    hf.copy_tokenizer_files(Path(args.tokenizer) if args.tokenizer else bundled_tokenizer_dir(), folder)
    return folder


def run_side(args) -> dict:
    import warnings

    import jax

    from scoring.reranker import Reranker

    folder = model_folder(args)
    before = args.side == "before"
    reranker = Reranker.from_pretrained(folder, dtype="float32", show_progress=False,
                                        max_batch_tokens=10**12 if before else None)
    if before:
        reranker = Reranker(reranker.config.replace(attn_implementation="xla"), reranker.params,
                            reranker.tokenizer, dtype="float32", show_progress=False, max_batch_tokens=10**12)
    n, tokens = WORKLOADS[args.workload]
    docs = documents(reranker.tokenizer, n, tokens)
    query = "what is the effect of vitamin D on bone density in older adults?"
    lengths = [len(e.input_ids) for e in reranker.prompt.encode_batch([query] * n, docs)]
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(args.calls):
            start = time.perf_counter()
            results = reranker.rank(query, docs, top_k=n)
            times.append(time.perf_counter() - start)
    peak_kb = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))
    return dict(side=args.side, layers=reranker.config.num_hidden_layers, docs=n, mean_tokens=sum(lengths) / n,
                max_tokens=max(lengths), first_s=times[0], steady_s=times[-1], peak_gib=peak_kb / 2**20,
                batches=sorted(reranker.compiled_extend_shapes | reranker.compiled_shapes),
                max_batch_tokens=reranker.max_batch_tokens, backend=jax.default_backend(),
                top=[r.index for r in results[:5]], load=os.getloadavg()[0])


def main(argv=None) -> None:
    args = parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, list(sorted(os.sched_getaffinity(0)))[: args.threads])
    if args.side:
        print("RESULT", json.dumps(run_side(args)))
        return
    model_folder(args)  # built once, before the timed subprocesses
    n, tokens = WORKLOADS[args.workload]
    print(f"workload: rank() of {n} documents of {tokens} tokens, Qwen2.5-0.5B shape, "
          f"{args.layers or 24} layers, float32, {args.threads} threads")
    heads, prompt = 14, tokens + 80
    print(f"before estimate: one batch of {min(n, 32)} rows holds {min(n, 32)} x {heads} x {prompt}^2 float32 scores "
          f"= {min(n, 32) * heads * prompt**2 * 4 / 2**30:.1f} GiB per layer")
    print("| side | layers | docs | mean prompt tokens | first call (s) | steady call (s) | pairs/s | peak RSS (GiB) "
          "| batches (rows, ..., tokens) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for side in args.sides.split(","):
        cmd = [sys.executable, "-m", "bench.long_bench", *(argv if argv is not None else sys.argv[1:]), "--side", side]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = re.search(r"RESULT (.*)", proc.stdout)
        if proc.returncode or not found:
            print(f"| {side} | failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode} |")
            continue
        r = json.loads(found.group(1))
        print(f"| {side} | {r['layers']} | {r['docs']} | {r['mean_tokens']:.0f} | {r['first_s']:.1f} "
              f"| {r['steady_s']:.1f} | {r['docs'] / r['steady_s']:.2f} | {r['peak_gib']:.2f} "
              f"| {r['batches']} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
