"""Joining a multi-process run (launch.runner.maybe_initialize_distributed): a busy
coordinator port is named before JAX starts, JAX's timeouts are settings, and a process
whose partners never come ends within the timeout it was given, saying what it waited for.

Before issue 25 a busy port crashed process 0 (SIGSEGV) while process 1 waited 200 s in
silence, and a missing process meant 307 s of silence, then "DEADLINE_EXCEEDED ... RegisterTask".
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from launch import runner
from tests.helpers.env import xla_flags

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def joined(monkeypatch):
    """jax.distributed.initialize replaced by a recorder of its arguments."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    for name in ("PRORANK_DISTRIBUTED", *runner.DISTRIBUTED_TIMEOUTS):
        monkeypatch.delenv(name, raising=False)
    return calls


def _distributed_env(monkeypatch, port: int, process_id: int = 0) -> None:
    monkeypatch.setenv("PRORANK_COORDINATOR", f"localhost:{port}")
    monkeypatch.setenv("PRORANK_NUM_PROCESSES", "2")
    monkeypatch.setenv("PRORANK_PROCESS_ID", str(process_id))


def test_a_busy_coordinator_port_is_named_before_jax_starts(monkeypatch, joined):
    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _distributed_env(monkeypatch, port)
        with pytest.raises(ValueError, match=f"port {port} is already in use on this host"):
            runner.maybe_initialize_distributed()
        _distributed_env(monkeypatch, port, process_id=1)  # only process 0 serves on it
        runner.maybe_initialize_distributed()
    assert joined == [{"coordinator_address": f"localhost:{port}", "num_processes": 2, "process_id": 1}]


def test_timeouts_are_settings_passed_to_jax(monkeypatch, joined):
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    _distributed_env(monkeypatch, port)
    monkeypatch.setenv("PRORANK_INIT_TIMEOUT_S", "20")
    monkeypatch.setenv("PRORANK_HEARTBEAT_TIMEOUT_S", "15")
    monkeypatch.setenv("PRORANK_SHUTDOWN_TIMEOUT_S", "30")
    runner.maybe_initialize_distributed()
    assert joined[-1] == {"coordinator_address": f"localhost:{port}", "num_processes": 2, "process_id": 0,
                          "initialization_timeout": 20, "heartbeat_timeout_seconds": 15,
                          "shutdown_timeout_seconds": 30}
    monkeypatch.setenv("PRORANK_INIT_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="PRORANK_INIT_TIMEOUT_S='soon': expected an integer >= 1"):
        runner.maybe_initialize_distributed()


def test_a_missing_process_ends_the_run_within_its_timeout(tmp_path):
    """Process 0 of 2 started alone, PRORANK_INIT_TIMEOUT_S=5: it ends (JAX aborts it) well
    within a minute, after a line that says what it waited for."""
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", XLA_FLAGS=xla_flags(),
               PRORANK_COORDINATOR=f"localhost:{port}", PRORANK_NUM_PROCESSES="2", PRORANK_PROCESS_ID="0",
               PRORANK_INIT_TIMEOUT_S="5")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "launch.cli", "train-score", "--config", "score_tiny",
                           f"out_dir={tmp_path}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert elapsed < 60, elapsed
    assert (f"[prorank] process 0 of 2: joining the coordinator at localhost:{port}; waiting up to 5 s "
            "for all 2 processes (PRORANK_INIT_TIMEOUT_S)") in output
    assert "DEADLINE_EXCEEDED" in output
    assert not any(tmp_path.iterdir())  # nothing started
