"""`prorank evaluate`: rerank a first-stage run on a BEIR split and print both side by side.

    prorank evaluate --model PATH --data BEIR_DIR [--split test] [--run RUN] [--top-k 100] [--out DIR]
    prorank evaluate --model PATH [--model OTHER] --data DIR [DIR ...] [--out DIR]

Without --run the first stage is BM25 (scoring.first_stage; stemmed English unless
--bm25-analyzer unstemmed), and the output says which first stage ran with what settings.
Several --data folders (or --model twice) give one table, a row per dataset plus the
average row, printed as Markdown and written as suite.md / suite.json under --out
(scoring.evaluate_suite). See scoring.evaluate for the protocol (what is reranked, what is
written). Data problems are reported as `path:line: message` with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from launch.command_help import help_kwargs
from launch.rank import add_reranker_args, load_reranker
from prorank_jax import paths
from prorank_jax.data import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prorank evaluate", description=__doc__.splitlines()[0],
                                     **help_kwargs("evaluate"))
    add_reranker_args(parser, several_models=True)
    parser.add_argument("--data", required=True, nargs="+",
                        help="BEIR folder(s) (corpus.jsonl, queries.jsonl, qrels/); several give one table")
    parser.add_argument("--split", default="test")
    parser.add_argument("--run", default=None, help="first-stage TREC run (default: BM25 top-k)")
    parser.add_argument("--top-k", type=int, default=100, help="candidates reranked per query (default 100)")
    parser.add_argument("--out", default=None, help="folder for reranked.run, metrics.json, per_query.tsv")
    parser.add_argument("--bm25-analyzer", choices=("stemmed", "unstemmed"), default="stemmed",
                        help="BM25 first stage: Snowball English stemmer (default) or none")
    parser.add_argument("--bm25-k1", type=float, default=1.5)
    parser.add_argument("--bm25-b", type=float, default=0.75)
    parser.add_argument("--compile-for", metavar="TOPOLOGY", default=None,
                        help="compile the scoring program for a TPU topology (v5e-8, ...), report, then exit")
    return parser


def evaluate_suite_main(args, bm25) -> int:
    """Several datasets and/or two models: one table (scoring.evaluate_suite)."""
    from prorank_jax.data import load_beir
    from scoring.evaluate_suite import evaluate_suite
    from scoring.reranker import DEFAULT_BATCH_SIZE

    if args.run is not None:
        raise ValueError("--run names one dataset's first stage; with several --data or --model, BM25 runs")
    if len(set(args.model)) != len(args.model):
        raise ValueError(f"--model given twice with the same path {args.model}")
    for folder in args.data:
        load_beir(folder, args.split)  # data errors before any model loads
    rerankers = {
        model: load_reranker(model, max_length=args.max_length, step=args.step, show_progress=True,
                                        batch_size=args.batch_size or DEFAULT_BATCH_SIZE)
        for model in args.model
    }
    print(f"first stage: {bm25.describe()}, top {args.top_k}", flush=True)

    def header(index: int, name: str, pairs: int) -> None:
        print(f"[{index + 1}/{len(args.data)}] {name} ({args.split}): {pairs} pairs x {len(rerankers)} "
              f"reranker(s)", flush=True)

    suite = evaluate_suite(rerankers, args.data, args.split, top_k=args.top_k, bm25=bm25,
                           instruction=args.instruction, out_dir=args.out, on_dataset=header)
    print(suite.markdown())
    print(suite.notes())
    for name, path in suite.files.items():
        print(f"wrote {name}: {path}")
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.compile_for:
        from launch.compile_for import compile_evaluate

        return compile_evaluate(args, args.compile_for)

    # Launched on several processes (launch/multi_gpu.sh, tpu_pod.sh), they split the queries
    # (scoring.evaluate) and process 0 writes the files.
    from launch.runner import maybe_initialize_distributed

    maybe_initialize_distributed()
    try:
        if args.top_k <= 0:
            raise ValueError(f"--top-k must be positive, got {args.top_k}")
        from scoring.first_stage import BM25Settings

        bm25 = BM25Settings(args.bm25_analyzer, k1=args.bm25_k1, b=args.bm25_b)
        for folder in args.data:  # a missing or refusing bucket, named, before any work
            paths.check_bucket(folder, write=False)
        if args.out is not None:
            paths.check_bucket(args.out, write=True)
        if len(args.data) > 1 or len(args.model) > 1:
            return evaluate_suite_main(args, bm25)
        args.data, args.model = args.data[0], args.model[0]
        from prorank_jax.data import load_beir
        from scoring.evaluate import evaluate
        from scoring.reranker import DEFAULT_BATCH_SIZE

        data = load_beir(args.data, args.split)  # before the model: data errors show at once
        reranker = load_reranker(
            args.model, max_length=args.max_length, batch_size=args.batch_size or DEFAULT_BATCH_SIZE, step=args.step,
            prompt_family=args.prompt_family,
        )
        report = evaluate(reranker, data, args.split, run=args.run, top_k=args.top_k, out_dir=args.out,
                          instruction=args.instruction, bm25=bm25)
    except (DataError, ValueError, FileNotFoundError, paths.RemotePathError) as err:
        print(f"prorank evaluate: error: {err}", file=sys.stderr)
        return 2
    print(f"{args.data} ({args.split}): {report.n_queries} queries, {report.n_pairs} pairs reranked, "
          f"first stage: {report.first_stage} top {report.top_k}")
    if args.run is None:
        print(f"first stage settings: {bm25.describe()}")
    print(report.table())
    for name, path in report.files.items():
        print(f"wrote {name}: {path}")
    return 0
