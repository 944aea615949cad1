"""Host-side collectives (prorank_jax.multihost) and what the training loop builds on them:
every process's data-iterator state in a checkpoint (issue 25, item 1) and host metrics
reduced over processes (item 5). The two-process runs themselves are in
tests/launch/test_multiprocess_resume.py (slow); here the gather is faked for a second
process, as tests/prorank_jax/test_preemption.py does for the stop agreement."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from prorank_jax import checkpoint as ckpt
from prorank_jax import multihost, training


def _fake_second_process(monkeypatch, other_value):
    """Process 0 of 2, the other process holding other_value: process_allgather stacks
    this process's array over the other's (as JSON text, padded like the real one)."""
    from jax.experimental import multihost_utils

    other = np.frombuffer(json.dumps(other_value).encode(), np.uint8)

    def gather(x):
        x = np.asarray(x)
        if x.ndim == 0:  # the lengths
            return np.array([int(x), other.size], np.int32)
        padded = np.zeros_like(x)
        padded[:other.size] = other
        return np.stack([x, padded])

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", gather)


def test_allgather_json_returns_every_process_value_in_order(monkeypatch):
    mine = {"next_batch": 3, "fingerprint": {"shard_index": 0}}
    theirs = {"next_batch": 3, "fingerprint": {"shard_index": 1}, "a longer": "value " * 5, "x": 2**40}
    _fake_second_process(monkeypatch, theirs)
    assert multihost.allgather_json(mine) == [mine, theirs]


def test_a_checkpoint_keeps_every_process_iterator_state(monkeypatch):
    _fake_second_process(monkeypatch, {"next_batch": 4, "shard": 1})
    saved = ckpt.data_state_to_save({"next_batch": 4, "shard": 0}, skipped_updates=2)
    assert saved == {"iterators": [{"next_batch": 4, "shard": 0}, {"next_batch": 4, "shard": 1}],
                     "process_count": 2, "skipped_updates": 2}
    # each process resumes from its own
    for index in range(2):
        assert ckpt.iterator_state_of_this_process(saved, "ckpt/4", index, 2) == {"next_batch": 4, "shard": index}


@pytest.mark.parametrize("saved_count,now", [(2, 1), (1, 2), (2, 4)])
def test_a_resume_with_another_process_count_is_refused_with_what_to_do(saved_count, now):
    saved = {"iterators": [{"next_batch": 1}] * saved_count, "process_count": saved_count}
    for index in range(now):  # the same answer on every process
        with pytest.raises(ckpt.CheckpointError) as err:
            ckpt.iterator_state_of_this_process(saved, "runs/x/checkpoints/4", index, now)
        message = str(err.value)
        assert f"runs/x/checkpoints/4: saved by a run of {saved_count} process(es), resumed with {now}" in message
        assert f"Resume with {saved_count} processes" in message and "model.path" in message


def test_older_single_process_checkpoints_still_resume():
    legacy = {"iterator": {"next_batch": 2}, "skipped_updates": 0}
    assert ckpt.iterator_state_of_this_process(legacy, "c/2", 0, 1) == {"next_batch": 2}
    with pytest.raises(ckpt.CheckpointError, match="resumed with 2"):
        ckpt.iterator_state_of_this_process(legacy, "c/2", 0, 2)
    assert ckpt.iterator_state_of_this_process({"skipped_updates": 0}, "c/2", 0, 2) is None
