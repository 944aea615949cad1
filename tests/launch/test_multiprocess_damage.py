"""A checkpoint step damaged on one host only: both processes fall back to the newest step
every process can read, and end with the weights of the same run left undamaged.

A 2-process stage-2 run (one CPU device each) saves steps 2, 4, 6; then the same command is
run again on a copy of its folder with step 6 unreadable to process 1 only
(tests/helpers/one_host_damage.py): its metadata, or its arrays. Both processes resume from
4, name the step they skip and why, set step 6 aside, and train steps 5-6 again to the
first run's final weights.

Slow (three rounds of two processes, ~4 minutes on 2 busy CPU cores): `make test-slow`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.env import xla_flags

REPO = Path(__file__).resolve().parents[2]
STEPS = 6
OVERRIDES = ["model.path=null", f"loop.steps={STEPS}", "loop.save_every=2", "loop.max_to_keep=3", "loop.log_every=1",
             "loop.eval_every=0", "loop.progress_bar=false", "loop.async_checkpointing=false", "eval_data=null",
             "data.batch_size=2", "data.buckets=[192]"]
TIMEOUT_S = 300

pytestmark = pytest.mark.slow


def _run_two(out_dir: Path, damage_on_1: tuple[str, ...] = ()) -> list[tuple[int, str]]:
    """Both processes' exit status and output; process 1 runs under one_host_damage with the
    arguments damage_on_1 when given."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", XLA_FLAGS=xla_flags(),
               PRORANK_COORDINATOR=f"localhost:{port}", PRORANK_NUM_PROCESSES="2", PRORANK_INIT_TIMEOUT_S="60",
               PRORANK_HEARTBEAT_TIMEOUT_S="60", PRORANK_SHUTDOWN_TIMEOUT_S="60")
    args = ["train-score", "--config", "score_tiny", f"out_dir={out_dir}", *OVERRIDES]
    procs = []
    for i in range(2):
        entry = (["-m", "tests.helpers.one_host_damage", *damage_on_1] if i == 1 and damage_on_1
                 else ["-m", "launch.cli"])
        procs.append(subprocess.Popen([sys.executable, *entry, *args], cwd=REPO,
                                      env={**env, "PRORANK_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        return [(proc.wait(timeout=TIMEOUT_S), proc.stdout.read()) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def _weights(folder: Path) -> list[np.ndarray]:
    import jax

    from prorank_jax.pretrained import load_pretrained

    return jax.tree_util.tree_leaves(jax.device_get(load_pretrained(folder)[1]))


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> Path:
    """A 2-process run's folder with steps 2, 4 and 6 saved (hf/ its final weights)."""
    out_dir = tmp_path_factory.mktemp("damage") / "saved"
    first = _run_two(out_dir)
    assert all(rc == 0 for rc, _ in first), [out[-3000:] for _, out in first]
    return out_dir


def _rerun_damaged(saved_run: Path, tmp_path: Path, damage: tuple[str, ...]) -> tuple[Path, list[tuple[int, str]]]:
    out_dir = tmp_path / "run"
    shutil.copytree(saved_run, out_dir)
    shutil.rmtree(out_dir / "hf")
    return out_dir, _run_two(out_dir, damage_on_1=damage)


def _ends_like_the_undamaged_run(out_dir: Path, saved_run: Path, rerun: list[tuple[int, str]]) -> None:
    for i, (rc, out) in enumerate(rerun):
        assert rc == 0, f"process {i}:\n{out[-3000:]}"
        assert f"[prorank] resuming {out_dir} from step 4" in out, out[-3000:]
    assert [p.name.split(".")[0] for p in (out_dir / "checkpoints").iterdir() if "unrestorable" in p.name] == ["6"]
    for a, b in zip(_weights(out_dir / "hf"), _weights(saved_run / "hf"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_step_whose_metadata_one_host_cannot_read_falls_back_on_both(saved_run, tmp_path):
    """Before: process 0 resumed from 6, process 1 from 4 (each its own newest step), and
    the run failed at its first collective ("... not the same on each process. Expected: [6 4]")."""
    out_dir, rerun = _rerun_damaged(saved_run, tmp_path, ("6",))
    for _, out in rerun:
        assert "checkpoint step 6 in" in out and "is unreadable on process 1 (item 'params':" in out, out[-3000:]
    _ends_like_the_undamaged_run(out_dir, saved_run, rerun)


def test_a_step_whose_arrays_one_host_cannot_read_falls_back_on_both(saved_run, tmp_path):
    """The metadata reads on both, the arrays fail on process 1 only, inside orbax's restore.
    Before: process 0's end-of-restore barrier paired with process 1's vote on the failure,
    so process 0 blamed its intact step 6 ("sync_global_devices name mismatch"), then 4 and
    2 failed the same way on both, and JAX's shutdown barrier aborted them (rc -6)."""
    out_dir, rerun = _rerun_damaged(saved_run, tmp_path, ("--arrays", "6"))
    (_, out0), (_, out1) = rerun
    assert "checkpoints/6 could not be restored (another process could not restore it); trying step 4" in out0, \
        out0[-3000:]
    assert "a truncated array file in" in out1 and "trying step 4" in out1, out1[-3000:]
    _ends_like_the_undamaged_run(out_dir, saved_run, rerun)
