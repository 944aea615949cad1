"""Joining a multi-process run (launch.runner.maybe_initialize_distributed): a busy
coordinator port is named before JAX starts, JAX's timeouts are settings, and a process
whose partners never come ends within the timeout it was given, saying what it waited for.

Before issue 25 a busy port crashed process 0 (SIGSEGV) while process 1 waited 200 s in
silence, and a missing process meant 307 s of silence, then "DEADLINE_EXCEEDED ... RegisterTask".
A refusal on process 0 alone (it checks and writes the run metadata) now ends every process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import json

import jax
import pytest

from launch import rollcall, runner
from tests.helpers.env import xla_flags

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def joined(monkeypatch):
    """jax.distributed.initialize replaced by a recorder of its arguments."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    # The roll call's waits stubbed (no partners here); process 0 still opens the port.
    monkeypatch.setattr(rollcall, "answer_the_roll", lambda *args: None)
    monkeypatch.setattr(rollcall, "call_the_roll", lambda server, *args: server.close())
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
    """Process 0 of 2 started alone, PRORANK_INIT_TIMEOUT_S=5: it ends well within a minute,
    after a line that says what it waited for, naming the process that never came (the roll
    call; before it, JAX aborted with a bare DEADLINE_EXCEEDED ... RegisterTask)."""
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
    assert ("RollCallError: process 0: process(es) 1 of 2 did not report within 5 s (PRORANK_INIT_TIMEOUT_S): "
            "not started") in output
    assert not any(tmp_path.iterdir())  # nothing started


def _process_env(port: int, process_id: int) -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", XLA_FLAGS=xla_flags(),
                PRORANK_COORDINATOR=f"localhost:{port}", PRORANK_NUM_PROCESSES="2",
                PRORANK_PROCESS_ID=str(process_id))


def test_a_refusal_on_process_0_alone_ends_every_process(tmp_path):
    """out_dir was trained with another model: process 0, which alone checks and writes the run
    metadata, refuses; before issue 25 process 1 went on into the restore's collectives and
    waited for JAX's timeouts (~300 s). Now it hears of the refusal and ends too (~10 s)."""
    (tmp_path / "model_config.json").write_text(json.dumps({"model_type": "another model"}))
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    command = [sys.executable, "-m", "launch.cli", "train-score", "--config", "score_tiny", f"out_dir={tmp_path}",
               "model.path=null", "eval_data=null", "loop.progress_bar=false"]
    procs = [subprocess.Popen(command, cwd=REPO, env=_process_env(port, i), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        (out0, _), (out1, _) = (proc.communicate(timeout=150) for proc in procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert procs[0].returncode != 0 and "this run folder was trained with a different model" in out0, out0[-3000:]
    assert procs[1].returncode != 0, out1[-3000:]
    assert (f"process 0 could not write the run metadata (run_config.json, model_config.json, tokenizer/) "
            f"in {tmp_path}") in out1, out1[-3000:]


def _start_all(tmp_path, ids: list[int], timeout_s: int = 20) -> list[tuple[int, str, float]]:
    """train-score processes with the given PRORANK_PROCESS_IDs (one job of len(ids)); each one's
    exit status, output and seconds to its end."""
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    command = [sys.executable, "-m", "launch.cli", "train-score", "--config", "score_tiny", f"out_dir={tmp_path}",
               "model.path=null", "eval_data=null", "loop.progress_bar=false"]
    procs = []
    start = time.monotonic()
    for i in ids:
        env = dict(_process_env(port, i), PRORANK_NUM_PROCESSES=str(len(ids)), PRORANK_INIT_TIMEOUT_S=str(timeout_s))
        procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    results = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            results.append((proc.returncode, out, time.monotonic() - start))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def test_two_processes_with_one_id_end_every_process_naming_it(tmp_path):
    """Ids 0, 1, 1 for a job of 3: JAX aborted the first process 1 at once ("ALREADY_EXISTS ...
    newer incarnation") and left the other two waiting for process 2 until the init timeout
    ("DEADLINE_EXCEEDED"). The roll call names the id on all three, without that wait."""
    results = _start_all(tmp_path, [0, 1, 1], timeout_s=60)
    for rc, out, seconds in results:
        assert rc != 0, out[-3000:]
        assert "2 processes were started with PRORANK_PROCESS_ID=1 (host " in out, out[-3000:]
        assert "give each of the 3 processes its own id in 0..2" in out
        assert seconds < 60, seconds  # no process waited for the init timeout
    assert not any(tmp_path.iterdir())


def test_a_second_process_0_is_named_and_the_first_ends_within_its_timeout(tmp_path):
    """Ids 0, 0 for a job of 2: the second finds the coordinator's port taken and says it may be
    a second process 0; the first names the process 1 that never reported, after 5 s."""
    results = _start_all(tmp_path, [0, 0], timeout_s=5)
    # Either may open the port first.
    (rc1, out1, _), = [r for r in results if "PRORANK_PROCESS_ID=0 too" in r[1]] or [results[1]]
    (rc0, out0, s0), = [r for r in results if r[1] is not out1]
    assert rc1 != 0 and "another process of this job was started with PRORANK_PROCESS_ID=0 too" in out1, out1[-3000:]
    assert rc0 != 0 and "process 0: process(es) 1 of 2 did not report within 5 s" in out0, out0[-3000:]
    assert s0 < 60, s0


def test_training_data_missing_on_one_host_ends_every_process_naming_it(tmp_path):
    """Process 1's data file is missing (data on a host-local disk): before, process 1 failed
    alone and process 0 waited in its next collective until JAX's timeouts; now every process
    ends, process 0 naming process 1 and its error."""
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    command = [sys.executable, "-m", "launch.cli", "train-score", "--config", "score_tiny", f"out_dir={tmp_path}",
               "model.path=null", "eval_data=null", "loop.progress_bar=false"]
    missing = tmp_path / "not_on_this_host.jsonl"
    procs = [subprocess.Popen(command + (["data.source=jsonl", f"data.path={missing}"] if i == 1 else []), cwd=REPO,
                              env=dict(_process_env(port, i), PRORANK_HEARTBEAT_TIMEOUT_S="100"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    start = time.monotonic()
    try:
        (out0, _), (out1, _) = (proc.communicate(timeout=150) for proc in procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert time.monotonic() - start < 90  # not JAX's 100 s heartbeat timeout
    assert procs[1].returncode != 0 and str(missing) in out1, out1[-3000:]
    assert procs[0].returncode != 0, out0[-3000:]
    assert "FailedElsewhere: process 1 could not load its tokenizer and training data: " in out0, out0[-3000:]
    assert str(missing) in out0
