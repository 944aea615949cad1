"""A tensor axis spanning processes is refused on every process before anything is loaded.

The batch is split by rows over mesh.data x mesh.fsdp and replicated over mesh.tensor; with
mesh.tensor spanning processes, each process's own rows were taken as copies of the others'
(issue 25: stage 2 trained on half its rows, listwise_count 4 vs 8 and another loss, in
silence; stage 1's sampler crashed with "prompt_index (64,) must be [B] = [32]"). Two
processes of one CPU device each, mesh data=1 x tensor=2, both stages.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.env import xla_flags

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_two(command: list[str], timeout: float = 150) -> list[tuple[int, str]]:
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", XLA_FLAGS=xla_flags(),
               PRORANK_COORDINATOR=f"localhost:{port}", PRORANK_NUM_PROCESSES="2", PRORANK_INIT_TIMEOUT_S="30",
               PRORANK_SHUTDOWN_TIMEOUT_S="30")
    procs = [subprocess.Popen(command, cwd=REPO, env={**env, "PRORANK_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        return [(proc.wait(timeout=timeout), proc.stdout.read()) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


@pytest.mark.parametrize("command, config", [("train-score", "score_tiny"), ("train-grpo", "grpo_tiny")])
def test_a_tensor_axis_across_processes_is_refused_on_every_process(tmp_path, command, config):
    out_dir = tmp_path / "run"
    outputs = _run_two([sys.executable, "-m", "launch.cli", command, "--config", config, f"out_dir={out_dir}",
                        "model.path=null", "eval_data=null", "loop.steps=2", "loop.log_every=1", "mesh.data=1",
                        "mesh.tensor=2", "loop.progress_bar=false"])
    for rc, out in outputs:
        assert rc != 0, out[-3000:]
        assert ("mesh.tensor=2 spans processes (processes 0 and 1 share one group): a batch is split by rows over "
                "(data, fsdp) only") in out, out[-3000:]
        assert "span the processes with mesh.data or mesh.fsdp" in out
    assert not out_dir.exists()  # refused before the run folder or any model
