"""Atomic file and folder writes: readers see the old content or the new, never a half-written one.

Every module that writes results (checkpoints' JSON side files, JSONL and TREC files,
metrics, exported folders) goes through these helpers, so "write to a temporary name
beside the target, then rename" is implemented once. The temporary name sits in the
target's own folder so that the final rename stays on one filesystem (os.replace is only
atomic there). In a gs:// bucket there is no rename: a file is buffered and uploaded as one
object (readers see the old object or the new one), and a folder is assembled locally and
uploaded between prorank_jax.paths' writing marker and its removal (`paths.upload_folder`).
Stdlib only: the data readers import this without jax.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from prorank_jax import paths


@contextlib.contextmanager
def atomic_text_writer(path: str | os.PathLike) -> Iterator[IO[str]]:
    """Open ``path`` for writing text so that readers never see a partial file.

    Writes go to a temporary file in the same folder, which replaces ``path`` only
    when the block exits without an exception; on failure the temporary file is
    removed and any previous ``path`` is left untouched. A gs:// path is written as one
    object upload when the block exits cleanly (nothing is uploaded on failure).
    """
    if paths.is_remote(path):
        buffer = io.StringIO(newline="\n")
        yield buffer
        paths.as_path(path).write_text(buffer.getvalue())
        return
    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def staged_dir(dst: str | os.PathLike, tag: str = "tmp") -> Iterator[Path]:
    """A fresh folder beside ``dst`` to fill; it replaces ``dst`` when the block exits cleanly
    and is removed when it raises, so ``dst`` is never seen half-written. For a gs:// dst the
    folder is a local temporary one, uploaded by paths.upload_folder when the block succeeds."""
    if paths.is_remote(dst):
        local = Path(tempfile.mkdtemp(prefix=f"prorank-{tag}-"))
        try:
            yield local
            paths.upload_folder(local, dst)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.{tag}-", dir=dst.parent))
    try:
        yield tmp
        replace_dir(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished folder into place; an existing dst is swapped out, then removed."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


class _RewrittenObject:
    """An append-mode text file for a bucket, which has no append: the lines live in memory
    and each flush uploads the whole object again (metrics files are small; a reader sees the
    last flushed whole object, never a torn line)."""

    def __init__(self, path):
        self._path = paths.as_path(path)
        self._text = self._path.read_text() if self._path.exists() else ""
        self._flushed = self._text

    def write(self, text: str) -> int:
        self._text += text
        return len(text)

    def flush(self) -> None:
        if self._text != self._flushed:
            self._path.write_text(self._text)
            self._flushed = self._text

    def close(self) -> None:
        self.flush()


def open_for_append(path: str | os.PathLike) -> IO[str]:
    """A text file opened for appending lines: a local file in "a" mode, or for gs:// an
    object rewritten whole at each flush (see _RewrittenObject)."""
    if paths.is_remote(path):
        return _RewrittenObject(path)  # type: ignore[return-value]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return open(path, "a")
