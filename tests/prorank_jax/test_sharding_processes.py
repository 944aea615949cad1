"""Which processes would hold the same batch rows on a mesh (sharding.rows_shared_across_processes).

A batch is split by rows over ("data", "fsdp") and replicated over "tensor"; each process
feeds its own rows to jax.make_array_from_process_local_data, which takes processes meeting
in one batch block for copies of one another. Issue 25: a tensor axis spanning two processes
trained stage 2 on half its rows (listwise_count 4 of 8) and crashed stage 1's sampler.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from prorank_jax import sharding as shd

AXES = ["data", "fsdp", "tensor"]
BATCH = ["data", "fsdp"]


@pytest.mark.parametrize("shape, processes, shared", [
    ((1, 1, 2), [0, 1], [(0, 1)]),  # tensor across the two processes: one group feeds both
    ((1, 1, 4), [0, 0, 1, 1], [(0, 1)]),
    ((2, 1, 2), [0, 1, 0, 1], [(0, 1)]),  # tensor pairs a device of each process
    ((2, 1, 1), [0, 1], []),  # data across processes
    ((1, 2, 1), [0, 1], []),  # fsdp across processes
    ((2, 1, 2), [0, 0, 1, 1], []),  # tensor within each process, data across them
    ((1, 2, 2), [0, 0, 1, 1], []),
    ((2, 2, 2), [0, 0, 1, 1, 2, 2, 3, 3], []),
    ((2, 1, 4), [0, 0, 1, 1, 2, 2, 3, 3], [(0, 1), (2, 3)]),
])
def test_processes_meeting_in_one_batch_block(shape, processes, shared):
    grid = np.asarray(processes).reshape(shape)
    assert shd.rows_shared_across_processes(grid, AXES, BATCH) == shared


def test_a_batch_rule_over_tensor_too_keeps_rows_apart():
    grid = np.asarray([0, 1]).reshape(1, 1, 2)
    assert shd.rows_shared_across_processes(grid, AXES, ["data", "fsdp", "tensor"]) == []


def test_one_process_passes_on_any_mesh():
    mesh = shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    shd.check_rows_within_processes(mesh)
