"""Reading back what a run wrote for watching it: TensorBoard event files (with TensorBoard's
own reader), W&B offline run files, jax.profiler traces."""

from __future__ import annotations

import json
import math
import struct
import time
from pathlib import Path

import numpy as np


def tensorboard_scalars(folder) -> dict[tuple[int, str], list[float]]:
    """{(step, tag): values in order} of every scalar TensorBoard reads from the folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every event
    accumulator.Reload()
    scalars: dict[tuple[int, str], list[float]] = {}
    for tag in accumulator.Tags()["scalars"]:
        for event in accumulator.Scalars(tag):
            scalars.setdefault((event.step, tag), []).append(event.value)
    return scalars


def metrics_scalars(rows) -> dict[tuple[int, str], list[float]]:
    """The same view of metrics.jsonl rows: every number but step and time."""
    scalars: dict[tuple[int, str], list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "time") and isinstance(value, (int, float)):
                scalars.setdefault((row["step"], key), []).append(float(value))
    return scalars


def assert_same_scalars(got: dict, expected: dict, float32: bool = False) -> None:
    """got == expected, NaN equal to NaN; float32: compared after rounding expected to float32
    (TensorBoard's simple_value is a float32)."""
    assert sorted(got) == sorted(expected), (sorted(set(got) ^ set(expected)))
    for key, values in expected.items():
        want = np.asarray(values, np.float32 if float32 else np.float64)
        have = np.asarray(got[key], want.dtype)
        assert np.array_equal(have, want, equal_nan=True), (key, have, want)


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file: a LevelDB-style log (what wandb-core writes), a 7-byte
    header (":W&B", magic, version), then records in 32 KiB blocks, each chunk with a 7-byte
    header (CRC32C, length, type: 1 full, 2 first, 3 middle, 4 last) around bytes of a
    wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, pos, chunk, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a chunk header never straddles a block: the rest is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if pos + length > len(data):  # a chunk still being written
            break
        if kind == 0:  # zero padding to the block's end
            pos += left - 7
            continue
        chunk += data[pos:pos + length]
        pos += length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def wandb_history(run_dir, wait_s: float = 60.0) -> list[dict]:
    """The history rows of a W&B offline run (<dir>/wandb/offline-run-*/run-*.wandb).

    wandb.finish() can return before wandb-core has written the end of the file, so this
    reads until the run's exit record is there (all records before it are then written)."""
    (path,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + wait_s
    while True:
        records = _wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any(r.WhichOneof("record_type") == "exit" for r in records), f"{path}: no exit record after {wait_s} s"
    return [{(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def wandb_scalars(rows) -> dict[tuple[int, str], list[float]]:
    scalars: dict[tuple[int, str], list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if not key.startswith("_"):
                scalars.setdefault((row["_step"], key), []).append(math.nan if value == "NaN" else float(value))
    return scalars


def profile_traces(out_dir) -> list[Path]:
    """The xplane traces jax.profiler wrote under <out_dir>/profile."""
    return sorted((Path(out_dir) / "profile").glob("plugins/profile/*/*.xplane.pb"))


def assert_mfu_of_the_run(out_dir, rows, updates_per_step: int = 1) -> None:
    """Every training row's mfu is its tokens' model FLOPs over the peak: mfu / tokens_per_s =
    6 x the run's matmul weights (its hf/config.json model) x updates per step / peak.
    The run must have trained in this process: on CPU the peak is this process's measurement."""
    import jax

    from prorank_jax import model, utilisation
    from prorank_jax.config import ModelConfig

    config = ModelConfig.from_hf(Path(out_dir) / "hf")
    shapes = jax.eval_shape(lambda: model.init_params(config, jax.random.key(0)))
    per_token = 6 * utilisation.matmul_params(shapes) * updates_per_step / utilisation.peak_flops()
    train = [r for r in rows if "loss" in r]
    assert train and all(r["mfu"] > 0 for r in train)
    for row in train:
        assert abs(row["mfu"] / row["tokens_per_s"] / per_token - 1) < 1e-9, row
