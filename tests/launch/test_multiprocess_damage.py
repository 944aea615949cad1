"""A checkpoint step damaged on one host only: both processes fall back to the newest step
every process can read, and end with the weights of the same run left undamaged.

A 2-process stage-2 run (one CPU device each) saves steps 2, 4, 6; then the same command is
run again with step 6 unreadable to process 1 only (tests/helpers/one_host_damage.py).
Before issue 25's agreement each process resumed from its own newest step: process 0 from
6, process 1 from 4, into different steps' restores and orbax's barriers: the intact step
was blamed, then a hang until JAX's timeouts. Now both resume from 4, name process 1 and its
reason, set step 6 aside, and train steps 5-6 again to the first run's final weights.

Slow (two rounds of two processes): `make test-slow`.
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


def _run_two(out_dir: Path, damaged_on_1: str | None = None) -> list[tuple[int, str]]:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", XLA_FLAGS=xla_flags(),
               PRORANK_COORDINATOR=f"localhost:{port}", PRORANK_NUM_PROCESSES="2", PRORANK_INIT_TIMEOUT_S="60",
               PRORANK_HEARTBEAT_TIMEOUT_S="60", PRORANK_SHUTDOWN_TIMEOUT_S="60")
    args = ["train-score", "--config", "score_tiny", f"out_dir={out_dir}", *OVERRIDES]
    procs = []
    for i in range(2):
        entry = (["-m", "tests.helpers.one_host_damage", damaged_on_1] if i == 1 and damaged_on_1
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


def test_a_step_damaged_on_one_host_falls_back_on_both(tmp_path):
    out_dir = tmp_path / "run"
    first = _run_two(out_dir)
    assert all(rc == 0 for rc, _ in first), [out[-3000:] for _, out in first]
    shutil.copytree(out_dir / "hf", tmp_path / "reference_hf")

    rerun = _run_two(out_dir, damaged_on_1="6")
    for i, (rc, out) in enumerate(rerun):
        assert rc == 0, f"process {i}:\n{out[-3000:]}"
        assert f"[prorank] resuming {out_dir} from step 4" in out, out[-3000:]
        assert "checkpoint step 6 in" in out and "is unreadable on process 1 (item 'params':" in out, out[-3000:]
    assert [p.name.split(".")[0] for p in (out_dir / "checkpoints").iterdir() if "unrestorable" in p.name] == ["6"]
    for a, b in zip(_weights(out_dir / "hf"), _weights(tmp_path / "reference_hf"), strict=True):
        np.testing.assert_array_equal(a, b)
