"""Readers for the BEIR folder layout.

A BEIR dataset folder holds::

    corpus.jsonl        {"_id": str, "title": str (optional), "text": str}
    queries.jsonl       {"_id": str, "text": str}
    qrels/{split}.tsv   header "query-id<TAB>corpus-id<TAB>score", then one
                        integer relevance grade per (query, document)

Extra JSON fields (BEIR's "metadata") are ignored. Every format problem is a
DataError naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prorank_jax.data.errors import DataError
from prorank_jax.data.jsonl import read_jsonl
from prorank_jax.paths import as_path

QRELS_HEADER = ("query-id", "corpus-id", "score")
HEADER_TEXT = "\t".join(QRELS_HEADER)


def _string_field(path, line: int, row: dict, name: str, *, required: bool = True) -> str:
    if name not in row:
        if required:
            raise DataError(path, f"missing field {name!r} (expected a string)", line)
        return ""
    value = row[name]
    if not isinstance(value, str):
        raise DataError(path, f"field {name!r} must be a string, got {type(value).__name__} {value!r}", line)
    return value


def _document_id(path, line: int, row: dict) -> str:
    doc_id = _string_field(path, line, row, "_id")
    if not doc_id.strip():
        raise DataError(path, "field '_id' is empty", line)
    return doc_id


def _read_id_text_rows(path) -> Iterator[tuple[int, str, dict]]:
    """Yield (line, _id, row) and reject an _id seen before, naming both lines."""
    first_line: dict[str, int] = {}
    for line, row in read_jsonl(path):
        row_id = _document_id(path, line, row)
        if row_id in first_line:
            raise DataError(path, f"duplicate _id {row_id!r} (first seen on line {first_line[row_id]})", line)
        first_line[row_id] = line
        yield line, row_id, row


def join_title_text(title: str, text: str) -> str:
    """The text a reranker sees for a document: ``title + " " + text`` when the title is non-empty.

    A single space (not a newline or a separator token) keeps the document a
    plain sentence sequence, the way mxbai-rerank and the BEIR evaluation of
    cross-encoders join the two fields.
    """
    title = title.strip()
    return f"{title} {text}" if title else text


def load_corpus(path: str | os.PathLike) -> dict[str, str]:
    """Read corpus.jsonl into ``{doc_id: document text}``.

    The document text is the title and the text joined with a single space when
    the title is non-empty, otherwise the text alone (see ``join_title_text``).
    ``title`` may be absent; ``_id`` and ``text`` are required strings. An empty
    document is kept (BEIR corpora contain a few), a duplicate ``_id`` is an error.
    """
    corpus = {}
    for line, doc_id, row in _read_id_text_rows(path):
        title = _string_field(path, line, row, "title", required=False)
        text = _string_field(path, line, row, "text")
        corpus[doc_id] = join_title_text(title, text)
    return corpus


def load_queries(path: str | os.PathLike) -> dict[str, str]:
    """Read queries.jsonl into ``{query_id: query text}``; empty text or a duplicate ``_id`` is an error."""
    queries = {}
    for line, query_id, row in _read_id_text_rows(path):
        text = _string_field(path, line, row, "text")
        if not text.strip():
            raise DataError(path, f"query {query_id!r} has empty 'text'", line)
        queries[query_id] = text
    return queries


def _parse_grade(path, line: int, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(path, f"score must be an integer relevance grade, got {value!r}", line) from None


def read_qrels_rows(path: str | os.PathLike) -> Iterator[tuple[int, str, str, int]]:
    """Yield ``(line, query_id, doc_id, grade)`` for each row of a BEIR qrels TSV.

    The first non-blank line must be the header ``query-id<TAB>corpus-id<TAB>score``.
    Rows must have exactly three tab-separated columns, an integer score, and a
    (query, document) pair not seen before (even with the same grade: a
    repeated row usually means two files were concatenated by mistake).
    """
    first_line: dict[tuple[str, str], int] = {}
    header_seen = False
    with as_path(path).open(encoding="utf-8") as f:
        for line, raw in enumerate(f, start=1):
            text = raw.rstrip("\r\n")
            if not text.strip():
                continue
            columns = text.split("\t")
            if not header_seen:
                if tuple(c.strip() for c in columns) != QRELS_HEADER:
                    raise DataError(path, f"expected the header {HEADER_TEXT!r}, got {text!r}", line)
                header_seen = True
                continue
            if len(columns) != 3:
                raise DataError(
                    path,
                    f"expected 3 tab-separated columns (query-id, corpus-id, score), got {len(columns)}: {text!r}",
                    line,
                )
            query_id, doc_id, score = (c.strip() for c in columns)
            if not query_id or not doc_id:
                raise DataError(path, f"empty query-id or corpus-id in {text!r}", line)
            grade = _parse_grade(path, line, score)
            key = (query_id, doc_id)
            if key in first_line:
                raise DataError(
                    path,
                    f"duplicate judgment for query {query_id!r}, document {doc_id!r} (first on line {first_line[key]})",
                    line,
                )
            first_line[key] = line
            yield line, query_id, doc_id, grade
    if not header_seen:
        raise DataError(path, f"empty qrels file; expected the header {HEADER_TEXT!r} and judgment rows")


def load_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels TSV into ``{query_id: {doc_id: grade}}`` (grade 0 judgments are kept)."""
    qrels: dict[str, dict[str, int]] = {}
    for _, query_id, doc_id, grade in read_qrels_rows(path):
        qrels.setdefault(query_id, {})[doc_id] = grade
    return qrels


@dataclass(frozen=True)
class BeirData:
    """One split of a BEIR dataset: the full corpus, the split's queries, its judgments."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def available_splits(folder: str | os.PathLike) -> list[str]:
    """The split names that have a qrels/{split}.tsv file in a BEIR folder."""
    qrels_dir = as_path(folder) / "qrels"
    return sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []


def load_beir(folder: str | os.PathLike, split: str) -> BeirData:
    """Load one split of a BEIR folder and check that the judgments refer to known ids.

    ``queries`` holds only the queries judged in this split (as BEIR's own
    loader does), so train and test queries never mix; ``corpus`` is the whole
    corpus, since any document may be a candidate. A qrels row naming a query
    or document that does not exist is a DataError with the qrels file, line and id.
    """
    folder = as_path(folder)
    paths = {
        "corpus": folder / "corpus.jsonl",
        "queries": folder / "queries.jsonl",
        "qrels": folder / "qrels" / f"{split}.tsv",
    }
    for name, path in paths.items():
        if not path.is_file():
            splits = ", ".join(available_splits(folder)) or "none"
            raise DataError(
                path,
                f"missing {name} file; a BEIR folder holds corpus.jsonl, queries.jsonl and qrels/<split>.tsv "
                f"(splits found: {splits})",
            )
    corpus = load_corpus(paths["corpus"])
    all_queries = load_queries(paths["queries"])
    qrels: dict[str, dict[str, int]] = {}
    for line, query_id, doc_id, grade in read_qrels_rows(paths["qrels"]):
        if query_id not in all_queries:
            raise DataError(paths["qrels"], f"query-id {query_id!r} is not in {paths['queries']}", line)
        if doc_id not in corpus:
            raise DataError(paths["qrels"], f"corpus-id {doc_id!r} is not in {paths['corpus']}", line)
        qrels.setdefault(query_id, {})[doc_id] = grade
    queries = {query_id: all_queries[query_id] for query_id in qrels}
    return BeirData(corpus=corpus, queries=queries, qrels=qrels)
