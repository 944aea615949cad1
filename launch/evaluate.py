"""`prorank evaluate`: rerank a first-stage run on a BEIR split and print both side by side.

    prorank evaluate --model PATH --data BEIR_DIR [--split test] [--run RUN] [--top-k 100] [--out DIR]

Without --run the first stage is BM25 (scoring.first_stage). See scoring.evaluate for the
protocol (what is reranked, what is written). Data problems are reported as
`path:line: message` with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from launch.rank import add_reranker_args
from prorank_jax.data import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prorank evaluate", description=__doc__.splitlines()[0])
    add_reranker_args(parser)
    parser.add_argument("--data", required=True, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--run", default=None, help="first-stage TREC run (default: BM25 top-k)")
    parser.add_argument("--top-k", type=int, default=100, help="candidates reranked per query (default 100)")
    parser.add_argument("--out", default=None, help="folder for reranked.run, metrics.json, per_query.tsv")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    # Launched on several processes (launch/multi_gpu.sh, tpu_pod.sh), they split the queries
    # (scoring.evaluate) and process 0 writes the files.
    from launch.runner import maybe_initialize_distributed

    maybe_initialize_distributed()
    try:
        if args.top_k <= 0:
            raise ValueError(f"--top-k must be positive, got {args.top_k}")
        from prorank_jax.data import load_beir
        from scoring.evaluate import evaluate
        from scoring.reranker import DEFAULT_BATCH_SIZE, Reranker

        data = load_beir(args.data, args.split)  # before the model: data errors show at once
        reranker = Reranker.from_pretrained(
            args.model, max_length=args.max_length, batch_size=args.batch_size or DEFAULT_BATCH_SIZE, step=args.step
        )
        report = evaluate(reranker, data, args.split, run=args.run, top_k=args.top_k, out_dir=args.out,
                          instruction=args.instruction)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"prorank evaluate: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.data} ({args.split}): {report.n_queries} queries, {report.n_pairs} pairs reranked, "
          f"first stage: {report.first_stage} top {report.top_k}")
    print(report.table())
    for name, path in report.files.items():
        print(f"wrote {name}: {path}")
    return 0
