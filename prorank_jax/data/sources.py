"""Where training examples come from: JSONL files, HF `datasets`, tfds array_record, the bundled BEIR data.

Every source yields the same two example types (``examples.PairExample`` for
stage 1 and pointwise scoring, ``examples.GroupExample`` for stage 2), so the
grain pipelines never know where the data came from. Every source reads rows of
one schema (``rows``: JSONL lines, HF `datasets` columns mapped to its fields,
tfds features of the same names); a malformed row is a DataError naming the file
and line (JSONL), the dataset and row (HF) or the record (tfds), and the field at fault.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prorank_jax.bundled import bundled_data_dir
from prorank_jax.data.beir import load_beir
from prorank_jax.data.errors import DataError
from prorank_jax.data.examples import GroupExample, PairExample, group_examples, pair_examples
from prorank_jax.data.jsonl import read_jsonl, write_jsonl
from prorank_jax.data.rows import RowError, group_from_row, group_to_row, pair_from_row, pair_to_row
from prorank_jax.paths import as_path

# ---------------------------------------------------------------------------
# JSONL


def read_pair_jsonl(path: str | os.PathLike) -> list[PairExample]:
    """Stage-1 examples from a JSONL file; a bad row is a DataError with file, line and field."""
    return _read_rows(path, pair_from_row)


def read_group_jsonl(path: str | os.PathLike) -> list[GroupExample]:
    """Stage-2 examples from a JSONL file; a bad row is a DataError with file, line and field."""
    return _read_rows(path, group_from_row)


def _read_rows(path, parse: Callable[[Mapping[str, Any]], Any]) -> list:
    examples = []
    for line, row in read_jsonl(path):
        try:
            examples.append(parse(row))
        except RowError as e:
            raise DataError(path, str(e), line) from None
    if not examples:
        raise DataError(path, "no examples: the file has no non-blank lines")
    return examples


def write_pair_jsonl(path: str | os.PathLike, examples: Iterable[PairExample]) -> int:
    """Write stage-1 examples as JSONL rows readable by ``read_pair_jsonl``; returns the count."""
    return write_jsonl(path, (pair_to_row(e) for e in examples))


def write_group_jsonl(path: str | os.PathLike, examples: Iterable[GroupExample]) -> int:
    """Write stage-2 examples as JSONL rows readable by ``read_group_jsonl``; returns the count."""
    return write_jsonl(path, (group_to_row(e) for e in examples))


# ---------------------------------------------------------------------------
# Bundled BEIR data


def bundled_pair_examples(split: str = "train", *, negatives_per_query: int = 3, seed: int = 0) -> list[PairExample]:
    """The bundled dataset's stage-1 pairs (``examples.pair_examples`` over one split)."""
    return pair_examples(load_beir(bundled_data_dir(), split), negatives_per_query=negatives_per_query, seed=seed)


def bundled_group_examples(split: str = "train", *, num_negatives: int = 3, seed: int = 0) -> list[GroupExample]:
    """The bundled dataset's stage-2 groups (``examples.group_examples`` over one split)."""
    return group_examples(load_beir(bundled_data_dir(), split), num_negatives=num_negatives, seed=seed)


# ---------------------------------------------------------------------------
# Hugging Face `datasets`

# Column names of the common public layouts, tried in order when a field has no
# explicit mapping: sentence-transformers triplets (query|anchor, positive,
# negative), its hard-negative layout (negative_1..negative_n), and our own.
PAIR_ALIASES: Mapping[str, tuple[str, ...]] = {
    "query": ("query", "anchor", "question"),
    "document": ("document", "passage"),
    "label": ("label", "score"),
    "query_id": ("query_id",),
    "doc_id": ("doc_id",),
}
GROUP_ALIASES: Mapping[str, tuple[str, ...]] = {
    "query": ("query", "anchor", "question"),
    "positive": ("positive", "pos"),
    "negatives": ("negatives", "negative", "neg"),
    "positive_label": ("positive_label",),
    "negative_labels": ("negative_labels",),
    "query_id": ("query_id",),
    "positive_id": ("positive_id",),
    "negative_ids": ("negative_ids",),
}
REQUIRED_PAIR_FIELDS = ("query", "document", "label")
REQUIRED_GROUP_FIELDS = ("query", "positive", "negatives")
_NUMBERED_NEGATIVE = re.compile(r"^negative_(\d+)$")


def resolve_columns(
    available: Sequence[str],
    aliases: Mapping[str, tuple[str, ...]],
    required: Sequence[str],
    columns: Mapping[str, str | Sequence[str]] | None,
    *,
    where: str,
) -> dict[str, str | tuple[str, ...]]:
    """Map each example field to a column (or, for a list field, a tuple of columns).

    ``columns`` overrides the aliases field by field; a field mapped to a list of
    columns gathers them into one list (``negatives: [negative_1, negative_2]``).
    When "negatives" is neither mapped nor found by alias, the hard-negative
    layout's ``negative_1 .. negative_n`` columns are gathered in numeric order.
    """
    columns = dict(columns or {})
    unknown = sorted(set(columns) - set(aliases))
    if unknown:
        raise ValueError(f"{where}: column mapping names unknown fields {unknown}; known fields: {sorted(aliases)}")
    listing = ", ".join(repr(c) for c in available)
    resolved: dict[str, str | tuple[str, ...]] = {}
    for field, candidates in aliases.items():
        if field in columns:
            chosen = columns[field]
            names = (chosen,) if isinstance(chosen, str) else tuple(chosen)
            missing = [c for c in names if c not in available]
            if missing:
                raise DataError(
                    where, f"column {missing[0]!r} (mapped to field {field!r}) is not in the dataset; "
                    f"available columns: {listing}"
                )
            resolved[field] = chosen if isinstance(chosen, str) else names
            continue
        found = next((c for c in candidates if c in available), None)
        if found is None and field == "negatives":
            numbered = sorted(
                (int(m.group(1)), c) for c in available if (m := _NUMBERED_NEGATIVE.match(c))
            )
            if numbered:
                resolved[field] = tuple(c for _, c in numbered)
                continue
        if found is not None:
            resolved[field] = found
        elif field in required:
            tried = ", ".join(repr(c) for c in candidates)
            raise DataError(
                where,
                f"no column for field {field!r} (looked for {tried}); available columns: {listing}; "
                f"pass columns={{{field!r}: '<column>'}} to map it",
            )
    return resolved


def remap_row(row: Mapping[str, Any], resolved: Mapping[str, str | tuple[str, ...]], list_fields: set[str]) -> dict:
    """A dataset row with its columns renamed to example fields (gathering multi-column fields)."""
    out = {}
    for field, column in resolved.items():
        if isinstance(column, tuple):
            out[field] = [row[c] for c in column]
        elif field in list_fields and isinstance(row[column], (str, bytes)):
            # A triplet's single "negative" column is a group with one negative.
            out[field] = [row[column]]
        else:
            out[field] = row[column]
    return out


def _is_saved_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


_DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def _data_files(path: Path) -> tuple[str, list[str]]:
    """The `datasets` packaged builder and the files for a local file or folder of files."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in _DATA_FILE_BUILDERS)
    if not files:
        raise DataError(path, f"no data files ({', '.join(sorted(_DATA_FILE_BUILDERS))}) in this folder")
    builders = {_DATA_FILE_BUILDERS.get(p.suffix) for p in files}
    if None in builders or len(builders) != 1:
        kinds = sorted(p.suffix or "(no suffix)" for p in files)
        raise DataError(path, f"expected data files of one kind (.json/.jsonl, .parquet or .csv), got {kinds}")
    return builders.pop(), [os.fspath(p) for p in files]


def load_hf_dataset(path_or_id: str | os.PathLike, split: str = "train", *, cache_dir: str | None = None):
    """A `datasets.Dataset` from a saved dataset dir, local json/jsonl/parquet/csv files, or a hub id.

    Local paths never touch the network. A string that is not an existing path
    is treated as a hub id (``load_dataset(id, split=split)``), which needs a
    machine with network access.
    """
    import datasets

    path = as_path(path_or_id)  # gs:// files reach `datasets` as gs:// URLs (fsspec's gcsfs)
    if _is_saved_dataset_dir(path):
        loaded = datasets.load_from_disk(os.fspath(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(path, f"no split {split!r} in this saved DatasetDict; splits: {sorted(loaded)}")
            loaded = loaded[split]
        return loaded
    if path.exists():
        builder, files = _data_files(path)
        # Local files carry no split names; whatever split was asked for is these files.
        return datasets.load_dataset(builder, data_files={split: files}, split=split, cache_dir=cache_dir)
    return datasets.load_dataset(os.fspath(path_or_id), split=split, cache_dir=cache_dir)


def _examples_from_table(
    dataset,
    *,
    where: str,
    aliases: Mapping[str, tuple[str, ...]],
    required: Sequence[str],
    list_fields: set[str],
    parse: Callable[[Mapping[str, Any]], Any],
    columns: Mapping[str, str | Sequence[str]] | None,
) -> list:
    resolved = resolve_columns(list(dataset.column_names), aliases, required, columns, where=where)
    examples = []
    for index, row in enumerate(dataset):
        try:
            examples.append(parse(remap_row(row, resolved, list_fields)))
        except RowError as e:
            # Rows are named 1-based, like the lines of the JSONL files they usually come from.
            raise DataError(where, f"row {index + 1}: {e} (columns used: {resolved})") from None
    if not examples:
        raise DataError(where, "no examples: the dataset is empty")
    return examples


def hf_pair_examples(
    path_or_id: str | os.PathLike,
    split: str = "train",
    *,
    columns: Mapping[str, str] | None = None,
    cache_dir: str | None = None,
    dataset=None,
) -> list[PairExample]:
    """Stage-1 examples from an HF dataset (columns query/document/label, or mapped by ``columns``).

    Pass an already loaded ``dataset`` to skip loading; ``path_or_id`` then only names it in errors.
    """
    dataset = load_hf_dataset(path_or_id, split, cache_dir=cache_dir) if dataset is None else dataset
    return _examples_from_table(
        dataset,
        where=f"{os.fspath(path_or_id)}[{split}]",
        aliases=PAIR_ALIASES,
        required=REQUIRED_PAIR_FIELDS,
        list_fields=set(),
        parse=pair_from_row,
        columns=columns,
    )


def hf_group_examples(
    path_or_id: str | os.PathLike,
    split: str = "train",
    *,
    columns: Mapping[str, str | Sequence[str]] | None = None,
    cache_dir: str | None = None,
    dataset=None,
) -> list[GroupExample]:
    """Stage-2 examples from an HF dataset.

    Layouts found without a mapping: our JSONL schema (query, positive,
    negatives list), sentence-transformers triplets (query or anchor,
    positive, negative) and hard-negative rows (query, positive,
    negative_1 .. negative_n). Other layouts: ``columns={"query": "q", ...}``.
    """
    dataset = load_hf_dataset(path_or_id, split, cache_dir=cache_dir) if dataset is None else dataset
    return _examples_from_table(
        dataset,
        where=f"{os.fspath(path_or_id)}[{split}]",
        aliases=GROUP_ALIASES,
        required=REQUIRED_GROUP_FIELDS,
        list_fields={"negatives", "negative_labels", "negative_ids"},
        parse=group_from_row,
        columns=columns,
    )


# ---------------------------------------------------------------------------
# tfds (array_record, random access without TensorFlow)


class TfdsExamples(Sequence):
    """A lazy, random-access view of a tfds data source as examples.

    Records are decoded on access, so a large array_record dataset is never
    read into memory; grain indexes it directly.
    """

    def __init__(self, source: Sequence[Mapping[str, Any]], parse: Callable[[Mapping[str, Any]], Any], where: str):
        self._source = source
        self._parse = parse
        self._where = where

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        # array_record raises ValueError out of range; Sequence protocols need IndexError.
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self._where}: index {index} out of range for {len(self)} records")
        index = index % len(self)
        try:
            return self._parse(self._source[index])
        except RowError as e:
            raise DataError(self._where, f"record {index}: {e}") from None

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def __repr__(self) -> str:
        return f"TfdsExamples({self._where!r}, {len(self)} records)"


def tfds_examples(name: str, split: str, *, data_dir: str | os.PathLike, kind: str) -> TfdsExamples:
    """Examples of a prepared tfds dataset, read with ``tfds.data_source`` (array_record, no TensorFlow).

    ``name`` is "dataset/config" (e.g. "prorank_bundled/groups") or "dataset"; any
    dataset whose features carry the row schema's field names (``rows``) reads, the
    bundled one (``tfds_bundled``) among them. ``kind`` is "pairs" or "groups" and
    selects the row schema. Nothing is downloaded or prepared here: a dataset that is
    not in ``data_dir`` is an error.
    """
    import tensorflow_datasets as tfds

    parse = {"pairs": pair_from_row, "groups": group_from_row}.get(kind)
    if parse is None:
        raise ValueError(f"kind must be 'pairs' or 'groups', got {kind!r}")
    where = f"tfds:{name}[{split}] in {os.fspath(data_dir)}"
    dataset, _, config = name.partition("/")
    prepared = Path(data_dir) / dataset
    if not (prepared / config).is_dir():
        found = []
        if prepared.is_dir():  # tfds keeps bookkeeping in hidden folders (.config); not configs
            found = sorted(p.name for p in prepared.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise DataError(
            where,
            f"not prepared: no folder {prepared / config}; prepared configs of {dataset!r} there: {found or 'none'} "
            "(prepare it first: tfds_bundled.prepare_bundled(data_dir) for the bundled data, or the "
            "dataset's builder with download_and_prepare(file_format='array_record'))",
        )
    try:
        source = tfds.data_source(name, split=split, data_dir=os.fspath(data_dir), download=False)
    except Exception as e:  # tfds raises several types (AssertionError, DatasetNotFoundError, ...)
        raise DataError(where, f"cannot open the prepared dataset: {type(e).__name__}: {e}") from e
    return TfdsExamples(source, parse, where)


# ---------------------------------------------------------------------------
# One entry point, by source kind

SOURCE_KINDS = ("bundled", "jsonl", "hf", "tfds", "inverse_cloze")
# Kinds that work without a path (they fall back to the bundled data).
PATHLESS_KINDS = ("bundled", "inverse_cloze")


def load_examples(
    kind: str,
    stage: int,
    *,
    path: str | os.PathLike | None = None,
    split: str = "train",
    num_negatives: int = 3,
    seed: int = 0,
    columns: Mapping[str, str | Sequence[str]] | None = None,
    inverse_cloze: Mapping[str, Any] | None = None,
    tfds_name: str | None = None,
) -> Sequence[PairExample] | Sequence[GroupExample]:
    """Examples for ``stage`` 1 (pairs) or 2 (groups) from one source kind.

    ``path``: the JSONL file ("jsonl"), a local path or hub id ("hf"), a BEIR folder
    whose corpus.jsonl alone is read ("inverse_cloze": self-supervised groups, see
    ``inverse_cloze.inverse_cloze_groups``; None = the bundled corpus), the
    tfds data_dir ("tfds": the prepared dataset ``tfds_name``, "dataset/config", whose
    features follow the row schema; None reads the prorank_bundled config prepared
    with ``num_negatives`` and ``seed``, see ``tfds_bundled.prepare_bundled``);
    unused for "bundled", where ``num_negatives`` and ``seed`` drive the
    example builders. ``columns`` maps fields to columns for "hf" sources;
    ``inverse_cloze`` holds keyword options of ``inverse_cloze_groups``.
    """
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    if kind not in SOURCE_KINDS:
        raise ValueError(f"source kind must be one of {SOURCE_KINDS}, got {kind!r}")
    if kind == "bundled":
        if stage == 1:
            return bundled_pair_examples(split, negatives_per_query=num_negatives, seed=seed)
        return bundled_group_examples(split, num_negatives=num_negatives, seed=seed)
    if kind == "inverse_cloze":
        from prorank_jax.data.beir import load_corpus
        from prorank_jax.data.inverse_cloze import inverse_cloze_groups, inverse_cloze_pairs

        corpus = load_corpus(as_path(path or bundled_data_dir()) / "corpus.jsonl")
        build = inverse_cloze_pairs if stage == 1 else inverse_cloze_groups
        return build(corpus, num_negatives=num_negatives, seed=seed, **dict(inverse_cloze or {}))
    if path is None:
        raise ValueError(f"source kind {kind!r} needs a path")
    if kind == "jsonl":
        return read_pair_jsonl(path) if stage == 1 else read_group_jsonl(path)
    if kind == "hf":
        loader = hf_pair_examples if stage == 1 else hf_group_examples
        return loader(path, split, columns=columns)
    kind = "pairs" if stage == 1 else "groups"
    if tfds_name is None:
        from prorank_jax.data.tfds_bundled import NAME, config_name  # imports tfds: only when asked for

        tfds_name = f"{NAME}/{config_name(kind, num_negatives=num_negatives, seed=seed)}"
    return tfds_examples(tfds_name, split, data_dir=path, kind=kind)

