"""A run's scalars as TensorBoard event files, written whole so that a bucket can hold them.

The records are TensorBoard's own: `tensorboard`'s Event / Summary protos, framed by its
RecordWriter (TFRecord: length, masked CRC32C, data, CRC), without TensorFlow. What this
module adds is how the bytes reach storage. Object stores (gs://) cannot append, so an
event file is never appended to: the writer keeps the encoded records of the current
file in memory and writes the whole file again at each flush, through prorank_jax.paths (a
local path or a gs:// URL alike). Every rewrite extends the previous content, so a reader
tailing the file (TensorBoard remembers its offset) sees the same records plus new ones.
To bound what one flush rewrites, a file holds at most `rows_per_file` logged rows; the
next row starts a new file. TensorBoard reads every `*tfevents*` file of the folder in
name order, and names sort in writing order: start time, host, process, file number.
"""

from __future__ import annotations

import io
import os
import socket
import time
from typing import Mapping

from prorank_jax import paths



FOLDER = "tensorboard"


def _protos():
    # Imported on first use: tensorboard.summary loads ~0.4 s of modules.
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    return event_pb2, summary_pb2, RecordWriter


def encode_record(event) -> bytes:
    """One Event as a TFRecord (the bytes an event file holds for it)."""
    *_, RecordWriter = _protos()
    buffer = io.BytesIO()
    RecordWriter(buffer).write(event.SerializeToString())
    return buffer.getvalue()


def scalars_event(step: int, wall_time: float, scalars: Mapping[str, float]):
    """An Event with one simple_value per scalar, tagged with its metrics.jsonl name."""
    event_pb2, summary_pb2, _ = _protos()
    values = [summary_pb2.Summary.Value(tag=name, simple_value=value) for name, value in scalars.items()]
    return event_pb2.Event(step=int(step), wall_time=float(wall_time), summary=summary_pb2.Summary(value=values))


def row_scalars(row: Mapping[str, object]) -> dict[str, float]:
    """The scalars of a metrics row: every number but its step and time (lists are left out)."""
    return {k: float(v) for k, v in row.items()
            if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool)}


class ScalarEventWriter:
    """Scalars of a run into <folder>/events.out.tfevents.*, each file written whole.

    flush_every_s: the least time between two writes of the current file (0: every row);
    each write of a gs:// file is one upload of it, so a run logging every step should
    not pay one per step. The file is also written when it is full and at close()."""

    def __init__(self, folder: str | os.PathLike, rows_per_file: int = 100, flush_every_s: float = 10.0):
        if rows_per_file < 1:
            raise ValueError(f"rows_per_file={rows_per_file} must be >= 1")
        self.folder = paths.as_path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows_per_file = rows_per_file
        self.flush_every_s = flush_every_s
        self._prefix = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
        self._file_number = 0
        self._records: list[bytes] = []
        self._rows = 0
        self._dirty = False
        self._last_flush = time.monotonic()
        self._start_file()

    @property
    def path(self) -> paths.AnyPath:
        """The event file being written now."""
        return self.folder / f"{self._prefix}.{self._file_number:05d}"

    def _start_file(self) -> None:
        event_pb2, _, _ = _protos()
        self._records = [encode_record(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))]
        self._rows = 0
        self._dirty = True

    def add(self, step: int, wall_time: float, scalars: Mapping[str, float]) -> None:
        if not scalars:
            return
        if self._rows == self.rows_per_file:
            self.flush()
            self._file_number += 1
            self._start_file()
        self._records.append(encode_record(scalars_event(step, wall_time, scalars)))
        self._rows += 1
        self._dirty = True
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def log_row(self, row: Mapping[str, object]) -> None:
        """A metrics.jsonl row: its scalars at its step and time."""
        self.add(int(row["step"]), float(row["time"]), row_scalars(row))

    def flush(self) -> None:
        """Write the current file whole (nothing when it has not changed since the last write)."""
        if not self._dirty:
            return
        self.path.write_bytes(b"".join(self._records))
        self._dirty = False
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
