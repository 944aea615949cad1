"""Reranker defaults against every fixed (reuse_prefix, pack_tokens) setting, in one run.

    python -m bench.defaults_bench --layers 4

For each model (the bundled tiny model; a random Qwen2.5-0.5B-shaped one, --layers of its
24) and workload, `Reranker.rank` of one query's documents runs with the defaults
(reuse_prefix=None, pack_tokens=None) and with each of the four fixed settings, the five
side by side, pass by pass, each pass starting one setting later (the fastest of --repeats
passes kept, after untimed passes
that compile: one for a fixed setting; for the defaults, as many as they take to settle,
i.e. until a call takes the fastest path of scoring.path_cost's estimate with nothing left
to compile, at most --max-warm). Workloads, texts from the bundled corpus:

* docs20: 1 query x 20 documents of 100-300 words, max_length 512 (the issue's case);
* abstracts24: 1 query x 24 abstract-length documents (~250 tokens, the size of BM25's top
  24 SciFact abstracts), max_length 512;
* longquery: 1 query of ~300 tokens x 24 documents of ~24 tokens, max_length 512, where
  most of each prompt is the shared prefix.

Printed: pairs/s of each setting, defaults / best fixed setting, the path the defaults took
once settled and the calls they took to settle. With --cold N, each setting instead runs N
distinct requests in a fresh process, compiles included.
"""

from __future__ import annotations

import argparse
import os
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4, help="layers of the 0.5B shape (default 4 of 24)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", default="runs/bench/qwen25-05b-random")
    parser.add_argument("--models", default="tiny,qwen05b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-warm", type=int, default=100, help="most untimed calls for the defaults to settle")
    parser.add_argument("--cold", type=int, default=0,
                        help="instead: N distinct 20-document requests in a fresh process per setting, compiles "
                             "included (what a new process meets)")
    parser.add_argument("--one-setting", default=None, help=argparse.SUPPRESS)  # the fresh process's side
    return parser.parse_args(argv)


def words_text(rng, corpus, words: int) -> str:
    out = []
    while len(out) < words:
        out.extend(corpus[rng.randint(len(corpus))].split())
    return " ".join(out[:words])


def workloads(tokenizer, seed: int) -> dict:
    import numpy as np

    from bench.predict_bench import make_pairs
    from prorank_jax.data import bundled_data_dir, load_corpus, load_queries

    rng = np.random.RandomState(seed)
    corpus = list(load_corpus(bundled_data_dir() / "corpus.jsonl").values())
    query = list(load_queries(bundled_data_dir() / "queries.jsonl").values())[0]
    docs20 = [words_text(rng, corpus, int(rng.randint(100, 301))) for _ in range(20)]
    _, abstracts = make_pairs(tokenizer, 24, 250, seed + 1, docs_per_query=24)
    long_query = words_text(rng, corpus, 230)
    _, short = make_pairs(tokenizer, 24, 24, seed + 2, docs_per_query=24)
    return {"docs20": (query, docs20), "abstracts24": (query, abstracts), "longquery": (long_query, short)}


SETTINGS = {"defaults": (None, None), "reuse+pack": (True, True), "reuse": (True, False),
            "pack": (False, True), "whole": (False, False)}


def model_path(model: str, args):
    from pathlib import Path

    from bench.common import qwen25_05b_config, random_hf_folder
    from prorank_jax import hf
    from prorank_jax.data import bundled_tokenizer_dir

    if model == "tiny":
        return "bundled_warm_start", "tiny (bundled)"
    config = qwen25_05b_config(args.layers)
    path = Path(args.cache + (f"-{args.layers}l" if args.layers else ""))
    random_hf_folder(path, config, seed=args.seed)
    hf.copy_tokenizer_files(bundled_tokenizer_dir(), path)
    return path, f"0.5B shape, {config.num_hidden_layers} layers"


def cold_requests(tokenizer, n: int, seed: int) -> list:
    """n requests of 1 query x 20 documents of 100-300 words, each with its own texts."""
    import numpy as np

    from prorank_jax.data import bundled_data_dir, load_corpus, load_queries

    rng = np.random.RandomState(seed)
    corpus = list(load_corpus(bundled_data_dir() / "corpus.jsonl").values())
    queries = list(load_queries(bundled_data_dir() / "queries.jsonl").values())
    return [(queries[i % len(queries)], [words_text(rng, corpus, int(rng.randint(100, 301))) for _ in range(20)])
            for i in range(n)]


def run_one_setting(args) -> None:
    """In a fresh process: the cold sequence with one setting; prints its seconds."""
    from scoring.reranker import Reranker

    model, name = args.one_setting.split(":")
    path, _ = model_path(model, args)
    reuse, pack = SETTINGS[name]
    r = Reranker.from_pretrained(path, dtype="float32", max_length=512, show_progress=False, reuse_prefix=reuse,
                                 pack_tokens=pack)
    requests = cold_requests(r.tokenizer, args.cold, args.seed)
    start = time.perf_counter()
    for query, docs in requests:
        r.rank(query, docs)
    print(f"SECONDS {time.perf_counter() - start:.2f} PROGRAMS {len(r.compiled_programs)}")


def cold_table(args) -> None:
    import subprocess
    import sys

    print(f"cold: {args.cold} distinct requests of 1 x 20 documents (100-300 words), max_length 512, "
          "each setting in a fresh process, compiles included")
    print("| model | " + " | ".join(f"{k} s (programs)" for k in SETTINGS) + " | best / defaults |")
    print("|---|" + "---|" * len(SETTINGS) + "---|")
    for model in args.models.split(","):
        seconds, programs = {}, {}
        for name in SETTINGS:
            out = subprocess.run([sys.executable, "-m", "bench.defaults_bench", "--cold", str(args.cold),
                                  "--layers", str(args.layers), "--seed", str(args.seed), "--one-setting",
                                  f"{model}:{name}"],
                                 capture_output=True, text=True, check=True).stdout
            line = next(x for x in out.splitlines() if x.startswith("SECONDS"))
            seconds[name], programs[name] = float(line.split()[1]), int(line.split()[3])
        best = min(v for k, v in seconds.items() if k != "defaults")
        label = model_path(model, args)[1]
        print(f"| {label} | " + " | ".join(f"{seconds[k]:.1f} ({programs[k]})" for k in SETTINGS)
              + f" | {best / seconds['defaults']:.2f} |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


def settle(reranker, query, docs, most: int) -> int:
    """Untimed calls (after the first) until the defaults take the fastest path with nothing
    left to compile, their steady state; returns the calls made, the first included."""
    calls = 1
    while calls < most:
        before = len(reranker.compiled_programs)
        reranker.rank(query, docs)
        calls += 1
        if reranker.path_chooser.settled and len(reranker.compiled_programs) == before:
            break
    return calls


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one_setting:
        return run_one_setting(args)
    if args.cold:
        return cold_table(args)
    from pathlib import Path

    from bench.common import machine_line, qwen25_05b_config, random_hf_folder
    from prorank_jax import hf
    from prorank_jax.data import bundled_tokenizer_dir
    from scoring.reranker import Reranker

    print(f"machine: {machine_line()}")
    print("| model | workload | defaults settled on (calls) | " + " | ".join(f"{k} pairs/s" for k in SETTINGS)
          + " | defaults / best |")
    print("|---|---|---|" + "---|" * len(SETTINGS) + "---|")
    for model in args.models.split(","):
        if model == "tiny":
            path, label = "bundled_warm_start", "tiny (bundled)"
        else:
            config = qwen25_05b_config(args.layers)
            path = Path(args.cache + (f"-{args.layers}l" if args.layers else ""))
            random_hf_folder(path, config, seed=args.seed)
            hf.copy_tokenizer_files(bundled_tokenizer_dir(), path)
            label = f"0.5B shape, {config.num_hidden_layers} layers"
        rerankers = {name: Reranker.from_pretrained(path, dtype="float32", max_length=512, show_progress=False,
                                                    reuse_prefix=reuse, pack_tokens=pack)
                     for name, (reuse, pack) in SETTINGS.items()}
        for work, (query, docs) in workloads(rerankers["defaults"].tokenizer, args.seed).items():
            times = {name: [] for name in rerankers}
            for r in rerankers.values():
                r.rank(query, docs)  # compiles
            warm = settle(rerankers["defaults"], query, docs, args.max_warm)
            chose = f"{rerankers['defaults'].last_path.name} ({warm})"
            names = list(rerankers)
            for i in range(args.repeats):
                # each pass starts one setting later: the first after the slowest (whole prompts) ran slower
                for name in names[i % len(names):] + names[: i % len(names)]:
                    r = rerankers[name]
                    start = time.perf_counter()
                    r.rank(query, docs)
                    times[name].append(time.perf_counter() - start)
            rate = {name: len(docs) / min(t) for name, t in times.items()}
            best = max(v for k, v in rate.items() if k != "defaults")
            print(f"| {label} | {work} | {chose} | " + " | ".join(f"{rate[k]:.2f}" for k in SETTINGS)
                  + f" | {rate['defaults'] / best:.2f} |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
