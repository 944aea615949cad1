"""TREC run files: ``qid Q0 docid rank score tag``, one retrieved document per line."""

from __future__ import annotations

import math
import os
from collections.abc import Container, Mapping

from prorank_jax.data.errors import DataError
from prorank_jax.files import atomic_text_writer
from prorank_jax.paths import as_path

RUN_COLUMNS = ("qid", "Q0", "docid", "rank", "score", "tag")


def read_run(path: str | os.PathLike, corpus_ids: Container[str] | None = None) -> dict[str, dict[str, float]]:
    """Read a TREC run into ``{query_id: {doc_id: score}}``.

    Columns are whitespace-separated. The rank column must be an integer but is
    otherwise ignored: like trec_eval, the order comes from the scores. Errors
    (DataError with file and line): a line without exactly six columns, a
    score that is not a finite number, a (query, document) pair listed twice,
    and, when ``corpus_ids`` is given, a document id that is not in it.
    """
    run: dict[str, dict[str, float]] = {}
    first_line: dict[tuple[str, str], int] = {}
    with as_path(path).open(encoding="utf-8") as f:
        for line, raw in enumerate(f, start=1):
            columns = raw.split()
            if not columns:
                continue
            if len(columns) != len(RUN_COLUMNS):
                expected = " ".join(RUN_COLUMNS)
                raise DataError(path, f"expected 6 columns ({expected}), got {len(columns)}: {raw.strip()!r}", line)
            query_id, _, doc_id, rank, score_text, _ = columns
            try:
                int(rank)
            except ValueError:
                raise DataError(path, f"rank must be an integer, got {rank!r}", line) from None
            try:
                score = float(score_text)
            except ValueError:
                raise DataError(path, f"score must be a number, got {score_text!r}", line) from None
            if not math.isfinite(score):
                raise DataError(path, f"score must be finite, got {score_text!r}", line)
            key = (query_id, doc_id)
            if key in first_line:
                first = first_line[key]
                raise DataError(path, f"document {doc_id!r} listed twice for query {query_id!r} (first on line {first})", line)
            if corpus_ids is not None and doc_id not in corpus_ids:
                raise DataError(path, f"document {doc_id!r} is not in the corpus", line)
            first_line[key] = line
            run.setdefault(query_id, {})[doc_id] = score
    return run


def ranked_doc_ids(doc_scores: Mapping[str, float]) -> list[str]:
    """Document ids by score descending, ties by doc id descending.

    This is the order trec_eval (and pytrec_eval / ir_measures) evaluate a
    run in: they ignore the rank column and re-sort by score, then by docno in
    decreasing string order. Writing ties the same way makes the rank column
    agree with what the evaluator sees.
    """
    return sorted(doc_scores, key=lambda doc_id: (doc_scores[doc_id], doc_id), reverse=True)


def _check_run_field(name: str, value: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise ValueError(
            f"write_run: {name} {value!r} must be non-empty and contain no whitespace "
            "(TREC columns are whitespace-separated)"
        )


def write_run(run: Mapping[str, Mapping[str, float]], path: str | os.PathLike, tag: str = "prorank") -> None:
    """Write ``{query_id: {doc_id: score}}`` as a TREC run file, atomically.

    Queries are written in sorted id order; within a query, ranks run 1..n in
    the order of ``ranked_doc_ids`` (score descending, ties by doc id
    descending, as trec_eval re-sorts). Scores are written with ``repr`` so
    that reading the file back gives the same floats.
    """
    _check_run_field("tag", tag)
    with atomic_text_writer(path) as f:
        for query_id in sorted(run):
            _check_run_field("query id", query_id)
            doc_scores = {doc_id: float(score) for doc_id, score in run[query_id].items()}
            for doc_id, score in doc_scores.items():
                _check_run_field("document id", doc_id)
                if not math.isfinite(score):
                    raise ValueError(
                        f"write_run: score of query {query_id!r}, document {doc_id!r} is {score}; expected a finite number"
                    )
            for rank, doc_id in enumerate(ranked_doc_ids(doc_scores), start=1):
                f.write(f"{query_id} Q0 {doc_id} {rank} {doc_scores[doc_id]!r} {tag}\n")
