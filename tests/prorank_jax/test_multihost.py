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


# ----------------------------------------------------------------------------- host metrics
def _score_batch(groups: np.ndarray) -> dict:
    """A stage-2 batch of the given rows of one global batch: 4 groups of up to 4 documents
    with different padding, the last group a padding row."""
    doc_mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0]], np.float32)
    example_mask = np.array([1, 1, 1, 0], np.float32)
    attention = np.zeros((4, 4, 10), np.int32)
    for g, lengths in enumerate([(10, 9, 8, 7), (5, 6, 0, 0), (10, 10, 10, 0), (3, 0, 0, 0)]):
        for d, n in enumerate(lengths):
            attention[g, d, :n] = 1
    return {"doc_mask": doc_mask[groups], "example_mask": example_mask[groups], "attention_mask": attention[groups],
            "input_ids": attention[groups] * 7}


def _score_outputs(rows_per_process: list[np.ndarray]) -> list[training.StepOutput]:
    from scoring.train import ScoreStage

    return [ScoreStage(batches=iter([_score_batch(rows)])).produce(None, None) for rows in rows_per_process]


def test_stage2_host_metrics_over_two_processes_equal_one_process_on_the_global_batch():
    [whole] = _score_outputs([np.arange(4)])
    halves = _score_outputs([np.arange(2), np.arange(2, 4)])
    one = training.reduce_host_metrics([training.host_window([whole])], whole.host_totals)
    two = training.reduce_host_metrics([training.host_window([h]) for h in halves], whole.host_totals)
    assert one["documents"] == 9.0
    assert two == pytest.approx(one, rel=1e-12)
    # what was logged before: process 0's own values
    assert halves[0].host_metrics["documents"] != one["documents"]
    assert halves[0].host_metrics["padding_fraction"] != pytest.approx(one["padding_fraction"])


def test_means_weigh_each_process_by_its_items_and_totals_average_over_steps():
    def out(reward, completions, docs):
        return training.StepOutput(batch={}, host_metrics={"reward": reward, "documents": docs},
                                   host_weights={"reward": completions}, host_totals=frozenset({"documents"}))

    windows = [training.host_window([out(1.0, 8, 3), out(0.0, 8, 5)]),  # process 0, two steps
               training.host_window([out(0.5, 24, 1), out(0.5, 24, 7)])]  # process 1
    reduced = training.reduce_host_metrics(windows, frozenset({"documents"}))
    assert reduced["reward"] == pytest.approx((8 * 1.0 + 24 * 0.5 + 24 * 0.5) / 64)
    assert reduced["documents"] == pytest.approx((3 + 5 + 1 + 7) / 2)  # per step, both processes


# ----------------------------------------------------------------------------- single writer
def _as_process(monkeypatch, index: int, others_failed: bool = False):
    """This test as process `index` of 2; the other process reports others_failed."""
    from jax.experimental import multihost_utils

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(multihost_utils, "process_allgather",
                        lambda x: np.array([int(np.asarray(x)), int(others_failed)], np.int32))


@pytest.fixture(scope="module")
def tiny_model():
    from prorank_jax.bundled import bundled_tokenizer_dir
    from prorank_jax.config import ModelConfig
    from prorank_jax.data import bundled_data_dir
    from prorank_jax.model import init_params

    config = ModelConfig.from_hf(bundled_data_dir() / "tiny_model.json")
    return config, init_params(config, jax.random.key(0)), bundled_tokenizer_dir()


def test_only_process_0_writes_the_final_model_and_summary(monkeypatch, tmp_path, tiny_model):
    """Before issue 25 every process wrote hf/ and summary.json into the shared out_dir
    (files.staged_dir then raced: "Directory not empty")."""
    from launch.stage_runner import save_final_model, write_summary

    config, params, tokenizer = tiny_model
    _as_process(monkeypatch, 1)
    folder = save_final_model(tmp_path, params, config, tokenizer, prompt_family="mxbai-v2")
    multihost.written_by_process_zero(lambda: write_summary(tmp_path, {"steps": 1}), "summary.json")
    assert folder == tmp_path / "hf" and list(tmp_path.iterdir()) == []  # process 1 wrote nothing

    _as_process(monkeypatch, 0)
    save_final_model(tmp_path, params, config, tokenizer, prompt_family="mxbai-v2")
    multihost.written_by_process_zero(lambda: write_summary(tmp_path, {"steps": 1}), "summary.json")
    assert (folder / "model.safetensors").is_file() and json.loads((tmp_path / "summary.json").read_text())


def test_a_failed_single_write_is_an_error_on_every_process(monkeypatch):
    def fail():
        raise OSError("disk full")

    _as_process(monkeypatch, 0)
    with pytest.raises(OSError, match="disk full"):
        multihost.written_by_process_zero(fail, "hf/")
    _as_process(monkeypatch, 1, others_failed=True)  # process 0 failed: process 1 is told, not left waiting
    with pytest.raises(RuntimeError, match="process 0 could not write hf/"):
        multihost.written_by_process_zero(fail, "hf/")


# ----------------------------------------------------------------------------- stage-2 widths
def test_stage2_batches_are_padded_to_the_widest_process_with_unchanged_scores(monkeypatch, tiny_model):
    """Each process pads its groups to its own length bucket; two processes with different
    buckets compiled different programs and aborted in the first collective (issue 25,
    found with data.buckets=[160, 192]). agree_group_width left-pads to the widest, and
    the scores equal those of the batch as it was."""
    from jax.experimental import multihost_utils

    from scoring.train import agree_group_width, group_scores

    config, params, _ = tiny_model
    rng = np.random.default_rng(0)
    ids = rng.integers(3, config.vocab_size, (2, 2, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[0, 1, :5] = 0  # a shorter, left-padded prompt
    batch = {"input_ids": ids * mask, "attention_mask": mask, "doc_mask": np.ones((2, 2), np.int32)}
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.array([int(x), 20]))  # the other: 20
    wide = agree_group_width(batch)
    assert wide["input_ids"].shape == (2, 2, 20) and wide["attention_mask"][..., :8].sum() == 0
    np.testing.assert_array_equal(wide["input_ids"][..., 8:], batch["input_ids"])
    assert wide["doc_mask"] is batch["doc_mask"]
    before = group_scores(params, config, batch["input_ids"], batch["attention_mask"], 5, 6)
    after = group_scores(params, config, wide["input_ids"], wide["attention_mask"], 5, 6)
    np.testing.assert_allclose(np.asarray(after), np.asarray(before), atol=1e-5)
