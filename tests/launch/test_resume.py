"""Preemption: kill -9 and SIGTERM mid-run, start again, end where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prorank_jax.checkpoint import Checkpointer, scan_steps

ROOT = Path(__file__).resolve().parents[2]
# A few small GRPO steps on the bundled tiny model, a checkpoint every 2 steps.
OVERRIDES = ["loop.steps=6", "loop.save_every=2", "loop.log_every=1", "loop.eval_every=0",
             "loop.progress_bar=false", "loop.async_checkpointing=false", "eval_data=null",
             "data.batch_size=2", "grpo.group_size=4"]


def command(out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "train-grpo", "--config", "grpo_tiny",
            f"out_dir={out_dir}", *OVERRIDES]


def env() -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def run_to_end(out_dir: Path) -> None:
    done = subprocess.run(command(out_dir), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def logged_steps(out_dir: Path) -> list[int]:
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def start_and_wait(out_dir: Path, until_step: int) -> subprocess.Popen:
    proc = subprocess.Popen(command(out_dir), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if any(s >= until_step for s in logged_steps(out_dir)):
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("run did not reach the step in time")


def final_params(out_dir: Path, step: int):
    ckpt = Checkpointer(out_dir / "checkpoints", read_only=True)
    assert ckpt.latest_step() == step
    import jax

    from prorank_jax.pretrained import load_pretrained

    _, params, _ = load_pretrained(out_dir, step=step)
    return jax.tree_util.tree_leaves(jax.device_get(params))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run_to_end(out)
    return out


def test_kill_9_then_restart_ends_with_the_uninterrupted_params(uninterrupted, tmp_path):
    proc = start_and_wait(tmp_path, until_step=3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    complete, _ = scan_steps(tmp_path / "checkpoints")
    assert complete and max(complete) < 6  # it really was cut short
    run_to_end(tmp_path)
    assert logged_steps(tmp_path)[-1] == 6
    for a, b in zip(final_params(tmp_path, 6), final_params(uninterrupted, 6)):
        np.testing.assert_array_equal(a, b)


def test_sigterm_saves_the_current_step_and_exits_cleanly(uninterrupted, tmp_path):
    proc = start_and_wait(tmp_path, until_step=3)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    last = logged_steps(tmp_path)[-1]
    assert f"preemption signal: saved step {last}" in output
    complete, broken = scan_steps(tmp_path / "checkpoints")
    assert max(complete) == last and not broken
    # and the saved step is the step the uninterrupted run had at that point
    run_to_end(tmp_path)
    for a, b in zip(final_params(tmp_path, 6), final_params(uninterrupted, 6)):
        np.testing.assert_array_equal(a, b)
