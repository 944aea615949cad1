"""JSON Lines reading with line numbers, and atomic JSON Lines writing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator

from prorank_jax.data.errors import DataError
from prorank_jax.files import atomic_text_writer
from prorank_jax.paths import as_path


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for every non-blank line of a JSONL file.

    Line numbers are 1-based and count blank lines too, so they match what an
    editor shows. A line that is not valid UTF-8, not valid JSON, or not a JSON
    object raises DataError naming the file and line.
    """
    with as_path(path).open("rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(path, f"not valid UTF-8 ({e.reason} at byte {e.start})", line_number) from None
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(path, f"invalid JSON: {e.msg} (column {e.colno})", line_number) from None
            if not isinstance(row, dict):
                raise DataError(path, f"expected a JSON object, got {type(row).__name__}", line_number)
            yield line_number, row


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write ``rows`` as one JSON object per line, atomically; return the count.

    Non-ASCII text is written as UTF-8 rather than escaped so files stay readable.
    """
    count = 0
    with atomic_text_writer(path) as f:
        for row in rows:
            if not isinstance(row, dict):
                raise TypeError(
                    f"write_jsonl({os.fspath(path)!r}): row {count} is a {type(row).__name__}, expected a dict"
                )
            f.write(json.dumps(row, ensure_ascii=False))
            f.write("\n")
            count += 1
    return count
