"""Atomic file and folder writes: readers see the old content or the new, never a half-written one.

Every module that writes results (checkpoints' JSON side files, JSONL and TREC files,
metrics, exported folders) goes through these helpers, so "write to a temporary name
beside the target, then rename" is implemented once. The temporary name sits in the
target's own folder so that the final rename stays on one filesystem (os.replace is only
atomic there). Stdlib only: the data readers import this without jax.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def atomic_text_writer(path: str | os.PathLike) -> Iterator[IO[str]]:
    """Open ``path`` for writing text so that readers never see a partial file.

    Writes go to a temporary file in the same folder, which replaces ``path`` only
    when the block exits without an exception; on failure the temporary file is
    removed and any previous ``path`` is left untouched.
    """
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
    and is removed when it raises, so ``dst`` is never seen half-written."""
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
