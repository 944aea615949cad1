"""`prorank prepare-data`: stage-1 pairs and stage-2 groups from a BEIR split or an HF dataset.

    prorank prepare-data --beir data/msmarco --split train --out data [--negatives bm25|run|random]
        [--run first.run] [--depth 100] [--num-negatives 7] [--pair-negatives 3]
        [--negatives-per-positive 1] [--seed 0] [--max-queries N] [--exclude-queries-of DIR:SPLIT ...]
    prorank prepare-data --hf PATH_OR_HUB_ID --split train --out data [...]

Writes OUT/stage1/NAME_pairs.jsonl and OUT/stage2/NAME_groups.jsonl (NAME: --name, default
the split), the files the Qwen configs read, and OUT/NAME_summary.json; prints the summary.
Hard negatives of a BEIR split: BM25 over its corpus (default; stemmed English, see
`--bm25-analyzer`), a given TREC run, or none (random documents only). An HF source keeps its
rows' own negatives. See prorank_jax.data.prepare for what is removed and the overlap guard.
Bad input is reported as `path:line: message` with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from launch.command_help import help_kwargs
from prorank_jax.data import DataError

NEGATIVE_SOURCES = ("bm25", "run", "random")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prorank prepare-data", description=__doc__.splitlines()[0],
                                     **help_kwargs("prepare-data"))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--beir", help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv)")
    source.add_argument("--hf", help="HF dataset: saved folder, json/jsonl/parquet/csv files, or a hub id")
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", required=True, help="output folder (the configs read OUT = data)")
    parser.add_argument("--name", default=None, help="file name prefix (default: the split)")
    parser.add_argument("--negatives", choices=NEGATIVE_SOURCES, default="bm25",
                        help="hard negatives of a BEIR split (default bm25 over its corpus)")
    parser.add_argument("--run", default=None, help="TREC run for --negatives run")
    parser.add_argument("--depth", type=int, default=100, help="hard negatives from the top DEPTH (default 100)")
    parser.add_argument("--num-negatives", type=int, default=7, help="stage 2: negatives per group (default 7)")
    parser.add_argument("--pair-negatives", type=int, default=3,
                        help="stage 1: unjudged negatives per query (default 3)")
    parser.add_argument("--negatives-per-positive", type=float, default=None,
                        help="stage 1 label balance: at most this many label-0 pairs per positive")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-queries", type=int, default=None, help="a seeded sample of this many queries")
    parser.add_argument("--exclude-queries-of", action="append", default=[], metavar="DIR:SPLIT",
                        help="refuse if a training query is in this BEIR split (repeatable)")
    parser.add_argument("--bm25-analyzer", choices=("stemmed", "unstemmed"), default="stemmed")
    parser.add_argument("--bm25-k1", type=float, default=1.5)
    parser.add_argument("--bm25-b", type=float, default=0.75)
    return parser


def prepare(args: argparse.Namespace):
    from prorank_jax.data import prepare as lib

    options = lib.PrepareOptions(
        num_negatives=args.num_negatives, pair_negatives=args.pair_negatives,
        negatives_per_positive=args.negatives_per_positive, depth=args.depth, seed=args.seed,
        max_queries=args.max_queries,
    )
    excluded = [lib.parse_split_spec(spec) for spec in args.exclude_queries_of]
    if args.hf is not None:
        from prorank_jax.data import hf_group_examples

        if args.negatives != "bm25" or args.run:
            raise ValueError("--negatives/--run apply to --beir sources; an HF source keeps its rows' negatives")
        groups = hf_group_examples(args.hf, args.split)
        lib.check_no_overlap({g.query_id or g.query: g.query for g in groups}, excluded)
        return lib.prepare_groups(groups, options=options, settings={"source": f"hf:{args.hf}", "split": args.split})

    from prorank_jax.data import load_beir, read_run
    from prorank_jax.paths import as_path

    if (args.run is not None) != (args.negatives == "run"):
        raise ValueError("--run FILE goes with --negatives run (and --negatives run needs --run)")
    data = load_beir(args.beir, args.split)
    lib.check_judged(data, as_path(args.beir) / "qrels" / f"{args.split}.tsv")
    lib.check_no_overlap(data.queries, excluded, source_folder=as_path(args.beir))
    settings = {"source": f"beir:{args.beir}", "split": args.split, "negatives": args.negatives}
    run = None
    if args.negatives == "run":
        run = read_run(args.run, corpus_ids=data.corpus)
        settings["run"] = args.run
    elif args.negatives == "bm25":
        from scoring.first_stage import BM25Settings

        bm25 = BM25Settings(args.bm25_analyzer, k1=args.bm25_k1, b=args.bm25_b)
        run = bm25.run(data.corpus, lib.sample_queries(data, options.max_queries, options.seed).queries, args.depth)
        settings["first_stage"] = bm25.as_dict()
    return lib.prepare_beir(data, run=run, options=options, settings=settings)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from prorank_jax.data import prepare as lib

    try:  # QueryOverlapError is a ValueError
        prepared = prepare(args)
        paths, summary = lib.write_prepared(prepared, args.out, args.name or args.split)
    except (DataError, ValueError, FileNotFoundError) as err:
        print(f"prorank prepare-data: error: {err}", file=sys.stderr)
        return 2
    print(lib.format_summary(summary))
    for name, path in paths.items():
        print(f"wrote {name}: {path}")
    return 0
