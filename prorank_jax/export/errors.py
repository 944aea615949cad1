"""How an export fails: bad input (nothing is written), or a written folder that does not check out."""

from __future__ import annotations


class ExportError(ValueError):
    """The checkpoint, its run folder or the export options cannot give a valid folder."""


class ExportCheckError(RuntimeError):
    """The written folder does not reproduce the checkpoint's scores (nothing was kept)."""
