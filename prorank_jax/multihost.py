"""Collectives over processes for host-side (Python/JSON) values.

The device collectives of a step live in the compiled programs; these are for what the
host holds: each process's data-iterator position, its host metrics. Every process must
call each function the same number of times in the same order (they are collectives);
on a single process they gather nothing.
"""

from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

import jax
import numpy as np

T = TypeVar("T")


def any_process(flag: bool) -> bool:
    """True on every process when flag is True on at least one of them.

    A collective on multi-process runs (every process must call it, the same number
    of times); free on a single process.
    """
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def sync_processes(name: str) -> None:
    """Wait until every process got here (name tells barriers apart); free on one process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def allgather_json(value: Any) -> list[Any]:
    """Every process's JSON-serialisable value, in process order, on every process.

    JSON text rather than arrays so any value (nested dicts, float64, ints beyond int32)
    arrives exactly as it was; the texts are padded to the longest one for the gather.
    """
    if jax.process_count() == 1:
        return [json.loads(json.dumps(value))]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode("utf-8"), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(bytes(row[:n]).decode("utf-8")) for row, n in zip(rows, lengths)]


def host_copy(tree):
    """Every array of tree whole, as numpy, on every process: an array split over processes
    (fsdp or tensor spanning hosts) is gathered (a collective), one leaf at a time, so the
    devices hold one whole leaf beyond their shards at most; the host holds all of them,
    so the whole model must fit one host's memory."""
    from jax.experimental import multihost_utils

    def whole(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree_util.tree_map(whole, tree)


def written_by_process_zero(write: Callable[[], T], what: str) -> T | None:
    """write() on process 0 only (a single-writer file or folder in the shared out_dir);
    every process returns once it is written (the agreement is the barrier), and a failed
    write raises on every process instead of leaving the others waiting. Returns write()'s
    value on process 0, None on the others."""
    result, error = None, None
    if jax.process_index() == 0:
        try:
            result = write()
        except Exception as err:  # re-raised below, after the others have heard of it
            error = err
    if any_process(error is not None):
        if error is not None:
            raise error
        raise RuntimeError(f"process 0 could not write {what}; its log says why")
    return result


class FailedElsewhere(RuntimeError):
    """Another process failed a step every process takes (raised on the processes that did not)."""


def agreed(step: Callable[[], T], what: str) -> T:
    """step() on every process, its failure an error on all of them: a process that fails
    raises its own error, the others a FailedElsewhere naming the first failing process and
    its error. Without it, one process's error (a config or data file missing on its host,
    its model folder unreadable) left the others waiting in their next collective until
    JAX's timeouts. `what` completes "process N could not ...". A collective."""
    result, error = None, None
    try:
        result = step()
    except Exception as err:  # re-raised below, after the others have heard of it
        error = err
    problems = allgather_json(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(i, problem) for i, problem in enumerate(problems) if problem is not None]
    if failed:
        index, problem = failed[0]
        raise FailedElsewhere(f"process {index} could not {what}: {problem}")
    return result
