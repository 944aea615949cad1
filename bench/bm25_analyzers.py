"""BM25 first stage, stemmed vs unstemmed, on BEIR splits: nDCG@10, RR@10, R@100 and time.

    python -m bench.bm25_analyzers DIR[:SPLIT] [DIR[:SPLIT] ...] [--k 100]

SPLIT defaults to test. For the published comparison points (bm25s / Pyserini flat BM25 on
BEIR, e.g. SciFact 0.687 / 0.679 nDCG@10), run it on those datasets' BEIR folders.
"""

from __future__ import annotations

import argparse
import time

from prorank_jax.data import load_beir
from scoring.first_stage import BM25Settings
from scoring.metrics import evaluate_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()
    measures = ("nDCG@10", "RR@10", f"R@{args.k}")
    print(f"| dataset | analyzer | queries | {' | '.join(measures)} | seconds |")
    print("|---|---|---|" + "---|" * len(measures) + "---|")
    for spec in args.datasets:
        folder, _, split = spec.partition(":")
        data = load_beir(folder, split or "test")
        for analyzer in ("stemmed", "unstemmed"):
            start = time.perf_counter()
            run = BM25Settings(analyzer).run(data.corpus, data.queries, args.k)
            seconds = time.perf_counter() - start
            means, _ = evaluate_run(data.qrels, run, measures)
            cells = " | ".join(f"{means[m]:.4f}" for m in measures)
            print(f"| {folder}:{split or 'test'} | {analyzer} | {len(data.queries)} | {cells} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
