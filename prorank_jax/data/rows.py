"""The row schema of training examples, and the conversions between rows and examples.

A row is a mapping of field -> value: a JSONL line, an HF `datasets` row (after its
columns are mapped to fields), or a tfds record. Every source and the tfds builder
convert through the functions here, so the schema is written once:

  stage 1 (pairs):  query: str, document: str, label: int (a relevance grade)
                    optional query_id: str, doc_id: str
  stage 2 (groups): query: str, positive: str, negatives: [str, ...]
                    optional positive_label: int (default 1),
                    negative_labels: [int, ...] (default all 0),
                    query_id: str, positive_id: str, negative_ids: [str, ...]

Ids are optional because most public training files have none; an absent id is the
empty string, never invented, so examples from two sources of the same data compare
equal. Values may be Python objects or the numpy scalars and arrays that tfds and arrow
give. A malformed row is a RowError naming the field; the caller adds where the row
was (file and line, dataset and row, or record).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prorank_jax.data.examples import GroupExample, PairExample

PAIR_FIELDS = ("query", "document", "label", "query_id", "doc_id")
GROUP_FIELDS = (
    "query",
    "positive",
    "negatives",
    "positive_label",
    "negative_labels",
    "query_id",
    "positive_id",
    "negative_ids",
)
DEFAULT_POSITIVE_LABEL = 1


class RowError(ValueError):
    """A row is malformed; the caller adds where the row was (file and line, or dataset and row)."""


def _is_int(value: Any) -> bool:
    # bool is an int subclass, but true/false as a grade is almost always a mistake.
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    # numpy / arrow integer scalars (tfds, HF) are fine as long as they are integral.
    return getattr(getattr(value, "dtype", None), "kind", None) in ("i", "u") and getattr(value, "ndim", None) == 0


def _get(row: Mapping[str, Any], name: str, *, required: bool) -> Any:
    value = row.get(name)
    if value is None and required:
        present = ", ".join(repr(k) for k in row) or "none"
        raise RowError(f"missing field {name!r} (fields present: {present})")
    return value


def _string(row: Mapping[str, Any], name: str, *, required: bool = True, non_empty: bool = False) -> str:
    value = _get(row, name, required=required)
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise RowError(f"field {name!r} must be a string, got {type(value).__name__} {value!r:.80}")
    if non_empty and not value.strip():
        raise RowError(f"field {name!r} is empty")
    return value


def _integer(row: Mapping[str, Any], name: str, *, default: int | None = None) -> int:
    value = _get(row, name, required=default is None)
    if value is None:
        return default
    if not _is_int(value):
        raise RowError(f"field {name!r} must be an integer, got {type(value).__name__} {value!r:.80}")
    return int(value)


def _list(row: Mapping[str, Any], name: str, *, required: bool) -> list | None:
    value = _get(row, name, required=required)
    if value is None:
        return None
    if getattr(value, "ndim", None) == 1:  # a numpy array from tfds or arrow
        return list(value)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise RowError(f"field {name!r} must be a list, got {type(value).__name__} {value!r:.80}")
    return list(value)


def _string_list(row: Mapping[str, Any], name: str, *, required: bool) -> list[str] | None:
    items = _list(row, name, required=required)
    if items is None:
        return None
    out = []
    for i, item in enumerate(items):
        if isinstance(item, bytes):
            item = item.decode("utf-8")
        if not isinstance(item, str):
            raise RowError(f"field {name!r}[{i}] must be a string, got {type(item).__name__} {item!r:.80}")
        out.append(item)
    return out


def _int_list(row: Mapping[str, Any], name: str) -> list[int] | None:
    items = _list(row, name, required=False)
    if items is None:
        return None
    for i, item in enumerate(items):
        if not _is_int(item):
            raise RowError(f"field {name!r}[{i}] must be an integer, got {type(item).__name__} {item!r:.80}")
    return [int(item) for item in items]


def _check_length(name: str, values: list | None, expected: int) -> None:
    if values is not None and len(values) != expected:
        raise RowError(f"field {name!r} has {len(values)} entries but 'negatives' has {expected}; they pair up")


def pair_from_row(row: Mapping[str, Any]) -> PairExample:
    """A stage-1 row ``{"query", "document", "label", [query_id, doc_id]}`` as a PairExample."""
    return PairExample(
        query_id=_string(row, "query_id", required=False),
        doc_id=_string(row, "doc_id", required=False),
        query=_string(row, "query", non_empty=True),
        document=_string(row, "document"),
        label=_integer(row, "label"),
    )


def group_from_row(row: Mapping[str, Any]) -> GroupExample:
    """A stage-2 row (see the module docstring) as a GroupExample with the positive first."""
    query = _string(row, "query", non_empty=True)
    positive = _string(row, "positive")
    negatives = _string_list(row, "negatives", required=True)
    negative_labels = _int_list(row, "negative_labels")
    negative_ids = _string_list(row, "negative_ids", required=False)
    _check_length("negative_labels", negative_labels, len(negatives))
    _check_length("negative_ids", negative_ids, len(negatives))
    return GroupExample(
        query_id=_string(row, "query_id", required=False),
        query=query,
        doc_ids=(_string(row, "positive_id", required=False), *(negative_ids or [""] * len(negatives))),
        documents=(positive, *negatives),
        labels=(
            _integer(row, "positive_label", default=DEFAULT_POSITIVE_LABEL),
            *(negative_labels or [0] * len(negatives)),
        ),
    )


def pair_to_row(example: PairExample) -> dict:
    return {
        "query_id": example.query_id,
        "doc_id": example.doc_id,
        "query": example.query,
        "document": example.document,
        "label": example.label,
    }


def group_to_row(example: GroupExample) -> dict:
    return {
        "query_id": example.query_id,
        "query": example.query,
        "positive_id": example.doc_ids[0],
        "positive": example.documents[0],
        "positive_label": example.labels[0],
        "negative_ids": list(example.doc_ids[1:]),
        "negatives": list(example.documents[1:]),
        "negative_labels": list(example.labels[1:]),
    }
