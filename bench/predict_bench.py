"""Reranker.predict (prorank-jax) vs mxbai-style scoring with transformers, same pairs, same weights.

    python -m bench.predict_bench --pairs 64 --doc-tokens 200 --threads 2
    python -m bench.predict_bench --pairs 64 --docs-per-query 16 --reuse-prefix on   # rank()'s workload

Both sides score the same (query, document) pairs with the same random Qwen2.5-0.5B-shaped
model (built with our init_params, saved once with hf.save, loaded by both):

* prorank-jax: Reranker.predict (length-sorted batches padded to length buckets, jit per
  shape, only the two label columns of the LM head; `--pack on`, the default, runs only the
  real tokens through the projections and MLPs). `--reuse-prefix` is the Reranker's
  reuse_prefix (auto: the shared-prefix KV cache is used from 2 documents per query on).
* transformers: what mxbai-rerank 0.1.6 does per batch: prompt ids (prorank_jax.prompts,
  id-for-id mxbai's, see tests/prorank_jax/test_prompts.py), left padding to a multiple of 8,
  Qwen2ForCausalLM forward without position_ids, logits[:, -1, "1"] - logits[:, -1, "0"].
  Batches are taken in the same length-sorted order (mxbai's rank() also sorts by length
  through bucket_batch_iter), so padding does not favour either side.

Texts are the bundled dataset's queries and documents; a document is a run of corpus
documents whose token count is drawn uniformly in [doc_tokens / 2, 3 * doc_tokens / 2].
`--docs-per-query 1` (the default) gives every pair its own random query; N > 1 gives each
random query N consecutive documents, the workload of rank() (the transformers side still
runs every pair's whole prompt, as mxbai does).
The tokenizer is the bundled tiny BPE (no hub access); only the token counts matter here.
`--threads` pins the process to that many cores (both frameworks) and sets torch's threads.
Timings exclude JAX compilation (reported apart) and torch's warm-up batch; the two sides
alternate pass by pass and each side's fastest pass is reported.
"""

from __future__ import annotations

import argparse
import os
import time


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64, help="query-document pairs to score (default 64)")
    parser.add_argument("--doc-tokens", type=int, default=200, help="mean document length in tokens (default 200)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--docs-per-query", type=int, default=1,
                        help="documents per random query (default 1: every pair has its own query)")
    parser.add_argument("--reuse-prefix", choices=("auto", "on", "off"), default="auto",
                        help="Reranker reuse_prefix: None / True / False (default auto)")
    parser.add_argument("--pack", choices=("on", "off"), default="on",
                        help="Reranker pack_tokens: only real tokens run through the dense layers (default on)")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers for a quick run (default 24)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per side, alternating; the fastest is kept")
    parser.add_argument("--steps-per-octave", type=int, default=None, help="Reranker length-bucket granularity")
    parser.add_argument("--cache", default="runs/bench/qwen25-05b-random", help="where the random HF folder is kept")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("pairs", "doc_tokens", "batch_size", "threads", "repeats", "docs_per_query"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    return args


def make_pairs(
    tokenizer, n_pairs: int, doc_tokens: int, seed: int, docs_per_query: int = 1
) -> tuple[list[str], list[str]]:
    import numpy as np

    from prorank_jax.data import bundled_data_dir, load_corpus, load_queries

    data = bundled_data_dir()
    corpus = list(load_corpus(data / "corpus.jsonl").values())
    queries = list(load_queries(data / "queries.jsonl").values())
    rng = np.random.RandomState(seed)
    qs, docs = [], []
    for i in range(n_pairs):
        target = rng.randint(max(doc_tokens // 2, 1), doc_tokens * 3 // 2 + 1)
        pieces, count = [], 0
        while count < target:
            text = corpus[rng.randint(len(corpus))]
            ids = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
            take = min(len(ids), target - count)
            pieces.append(tokenizer.decode(ids[:take]))
            count += take
        # Drawn after the document, as with one query per pair, so docs_per_query=1 keeps the old pairs.
        qs.append(queries[rng.randint(len(queries))] if i % docs_per_query == 0 else qs[-1])
        docs.append("".join(pieces).strip())
    return qs, docs


def torch_mxbai_scores(torch_model, prompt, queries, documents, batch_size: int):
    """mxbai-rerank's MxbaiRerankV2.predict, batch by batch, in length-sorted order."""
    import numpy as np
    import torch

    from prorank_jax.prompts import left_pad, round_up_length

    ids = [e.input_ids for e in prompt.encode_batch(queries, documents)]
    order = np.argsort(-np.array([len(x) for x in ids]), kind="stable")
    scores = np.zeros(len(ids), np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = [ids[i] for i in idx]
            batch_ids, mask = left_pad(rows, round_up_length(max(map(len, rows)), 8), prompt.pad_id)
            logits = torch_model(
                input_ids=torch.tensor(batch_ids, dtype=torch.long), attention_mask=torch.tensor(mask)
            ).logits
            scores[idx] = (logits[:, -1, prompt.yes_id] - logits[:, -1, prompt.no_id]).float().numpy()
    return scores


def main(argv=None) -> None:
    args = parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, list(sorted(os.sched_getaffinity(0)))[: args.threads])

    from pathlib import Path

    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from bench.common import machine_line, qwen25_05b_config, random_hf_folder
    from prorank_jax import hf
    from prorank_jax.data import bundled_tokenizer_dir
    from scoring.reranker import DEFAULT_STEPS_PER_OCTAVE, Reranker

    torch.set_num_threads(args.threads)
    config = qwen25_05b_config(args.layers)
    folder = Path(args.cache + (f"-{args.layers}l" if args.layers else ""))
    random_hf_folder(folder, config, seed=args.seed)
    hf.copy_tokenizer_files(bundled_tokenizer_dir(), folder)  # the random model needs some tokenizer

    steps = args.steps_per_octave or DEFAULT_STEPS_PER_OCTAVE
    reuse = {"auto": None, "on": True, "off": False}[args.reuse_prefix]
    reranker = Reranker.from_pretrained(
        folder, dtype="float32", batch_size=args.batch_size, show_progress=False, steps_per_octave=steps,
        reuse_prefix=reuse, pack_tokens=args.pack == "on",
    )
    queries, documents = make_pairs(reranker.tokenizer, args.pairs, args.doc_tokens, args.seed, args.docs_per_query)
    lengths = [len(e) for e in reranker.prompt.encode_batch(queries, documents)]

    start = time.perf_counter()
    reranker.predict(queries, documents)  # first call: compiles every shape it needs
    first_s = time.perf_counter() - start

    torch_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    warm = slice(0, args.batch_size)
    torch_mxbai_scores(torch_model, reranker.prompt, queries[warm], documents[warm], args.batch_size)

    # The two sides alternate, pass by pass, and the fastest pass of each is kept: other
    # load on the machine then slows both alike instead of whichever happened to run during it.
    ours_times, torch_times, results = [], [], {}
    for _ in range(args.repeats):
        ours_times.append(_seconds(lambda: results.__setitem__("ours", reranker.predict(queries, documents))))
        torch_times.append(_seconds(lambda: results.__setitem__(
            "theirs", torch_mxbai_scores(torch_model, reranker.prompt, queries, documents, args.batch_size))))
    ours_s, torch_s = min(ours_times), min(torch_times)
    compile_s = max(first_s - ours_s, 0.0)
    ours, theirs = results["ours"], results["theirs"]
    prefix_path = reranker.last_path.reuse  # with reuse auto, the path the timed calls took (scoring.path_cost)

    diff = float(np.abs(ours - theirs).max())
    print(f"machine: {machine_line()}, torch {torch.__version__}, {args.threads} threads")
    print(f"model: Qwen2.5-0.5B shape, {config.num_hidden_layers} layers, random weights, float32")
    shapes = len(reranker.compiled_shapes) + len(reranker.compiled_prefix_shapes) + len(reranker.compiled_extend_shapes)
    print(f"pairs: {args.pairs} ({len(set(queries))} distinct queries, {args.docs_per_query} docs per query), "
          f"prompt tokens mean {np.mean(lengths):.0f} (min {min(lengths)}, max {max(lengths)}), "
          f"batch size {args.batch_size}, {shapes} compiled shapes, "
          f"jax compile ~{compile_s:.1f} s, load average {os.getloadavg()[0]:.1f}")
    print(f"reuse prefix: {args.reuse_prefix} -> {'shared-prefix KV cache' if prefix_path else 'whole prompts'}, "
          f"packed tokens: {args.pack}")
    print(f"seconds per pass: prorank-jax {[round(t, 1) for t in ours_times]}, "
          f"transformers {[round(t, 1) for t in torch_times]}")
    median_ratio = float(np.median(torch_times) / np.median(ours_times))
    print("| layers | pairs | docs/query | reuse prefix | pack | mean prompt tokens | batch | threads "
          "| prorank-jax pairs/s | transformers pairs/s | speedup (best) | speedup (median) | max abs score diff |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {config.num_hidden_layers} | {args.pairs} | {args.docs_per_query} "
          f"| {args.reuse_prefix} ({'on' if prefix_path else 'off'}) | {args.pack} | {np.mean(lengths):.0f} "
          f"| {args.batch_size} | {args.threads} | {args.pairs / ours_s:.2f} | {args.pairs / torch_s:.2f} "
          f"| {torch_s / ours_s:.2f}x | {median_ratio:.2f}x | {diff:.2e} |")


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
