"""Split a single-split BEIR folder's judged queries into train and test, deterministically.

    python -m bench.cranfield_split SRC_DIR OUT_DIR [--split test] [--every 5]

Queries are taken in numeric id order (string order when ids are not all numbers); every
`--every`-th one (the 5th, 10th, ...) goes to test, the rest to train. OUT_DIR gets
qrels/train.tsv and qrels/test.tsv, and symlinks to SRC_DIR's corpus.jsonl and queries.jsonl.
Used for the by-hand Cranfield run in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from prorank_jax.data import read_qrels_rows


def split_ids(query_ids, every: int) -> tuple[list[str], list[str]]:
    key = (lambda q: (int(q), q)) if all(q.isdigit() for q in query_ids) else (lambda q: (0, q))
    ordered = sorted(query_ids, key=key)
    test = [q for i, q in enumerate(ordered, start=1) if i % every == 0]
    held = set(test)
    return [q for q in ordered if q not in held], test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("out")
    parser.add_argument("--split", default="test")
    parser.add_argument("--every", type=int, default=5)
    args = parser.parse_args()
    src, out = Path(args.src).resolve(), Path(args.out)
    rows = [(q, d, g) for _, q, d, g in read_qrels_rows(src / "qrels" / f"{args.split}.tsv")]
    train, test = split_ids(sorted({q for q, _, _ in rows}), args.every)
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        link = out / name
        if not link.exists():
            os.symlink(src / name, link)
    for name, ids in (("train", set(train)), ("test", set(test))):
        with open(out / "qrels" / f"{name}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{g}\n" for q, d, g in rows if q in ids)
    print(f"{len(train)} train queries, {len(test)} test queries (every {args.every}th by id) -> {out}")


if __name__ == "__main__":
    main()
