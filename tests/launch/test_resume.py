"""Preemption: kill -9 and SIGTERM mid-run, start again, end where an uninterrupted run ends.

Equal final params alone cannot tell a resumed run from one restarted at step 0 (same seed,
same data, same params), so each restart is also checked to announce the step it resumes
from and to log only the steps after it (metrics.jsonl is appended to on resume).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from prorank_jax.checkpoint import TMP_SUFFIX, Checkpointer, scan_steps

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6
# A few small GRPO steps on the bundled tiny model, a checkpoint every 2 steps.
OVERRIDES = [f"loop.steps={STEPS}", "loop.save_every=2", "loop.log_every=1", "loop.eval_every=0",
             "loop.progress_bar=false", "loop.async_checkpointing=false", "eval_data=null",
             "data.batch_size=2", "grpo.group_size=4"]
ASYNC = ["loop.async_checkpointing=true"]  # later overrides win


def command(out_dir: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "launch.cli", "train-grpo", "--config", "grpo_tiny",
            f"out_dir={out_dir}", *OVERRIDES, *extra]


def env() -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def run_to_end(out_dir: Path, extra: tuple[str, ...] = ()) -> str:
    """Run the command to completion; returns its stdout."""
    done = subprocess.run(command(out_dir, extra), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def logged_steps(out_dir: Path) -> list[int]:
    path = out_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def start_and_wait(out_dir: Path, until, extra: tuple[str, ...] = (), poll_s: float = 0.2) -> subprocess.Popen:
    """Start the run and return once until(out_dir) holds (polled every poll_s seconds)."""
    proc = subprocess.Popen(command(out_dir, extra), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while time.time() < deadline:
        if until(out_dir):
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stdout.read()[-3000:]}")
        time.sleep(poll_s)
    proc.kill()
    raise AssertionError("run did not reach the step in time")


def reached(step: int):
    return lambda out_dir: any(s >= step for s in logged_steps(out_dir))


def mid_async_save(out_dir: Path) -> bool:
    """A save is being written (orbax's temporary folder) above a complete step, or, if the
    polling missed every such window, step 4 is saved and step 6 is not yet."""
    ckpts = out_dir / "checkpoints"
    complete, _ = scan_steps(ckpts)
    if not complete:
        return False
    writing = [p for p in ckpts.iterdir() if TMP_SUFFIX in p.name] if ckpts.is_dir() else []
    return bool(writing) or (max(complete) == 4 and reached(5)(out_dir))


def final_params(out_dir: Path, step: int):
    ckpt = Checkpointer(out_dir / "checkpoints", read_only=True)
    assert ckpt.latest_step() == step
    import jax

    from prorank_jax.pretrained import load_pretrained

    _, params, _ = load_pretrained(out_dir, step=step)
    return jax.tree_util.tree_leaves(jax.device_get(params))


def assert_resumed(out_dir: Path, output: str, from_step: int, lines_before: int) -> None:
    """The restart said it resumes from from_step and logged exactly the steps after it."""
    resuming = [line for line in output.splitlines() if line.startswith("[prorank] resuming")]
    assert resuming == [f"[prorank] resuming {out_dir} from step {from_step}"], output[-3000:]
    # metrics.jsonl is appended to: the rows the restart wrote are those after the first run's
    assert logged_steps(out_dir)[lines_before:] == list(range(from_step + 1, STEPS + 1))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, run_to_end(out, ("--show-config",))


def test_train_prints_the_resolved_config_with_the_overrides(uninterrupted):
    """`train-grpo --show-config` prints the resolved config (YAML after "resolved config:") before
    it trains; it holds the command line's overrides over grpo_tiny's values, and a fresh run does
    not resume."""
    out, output = uninterrupted
    head, _, rest = output.partition("resolved config:\n")
    assert not head.strip(), head  # printed first
    block = rest.split("\n[prorank]", 1)[0]
    printed = yaml.safe_load(block)
    assert printed["out_dir"] == str(out)
    assert printed["loop"]["steps"] == STEPS and printed["loop"]["save_every"] == 2
    assert printed["loop"]["async_checkpointing"] is False and printed["loop"]["progress_bar"] is False
    assert printed["data"]["batch_size"] == 2 and printed["grpo"]["group_size"] == 4
    assert printed["eval_data"] is None
    # resolved: defaults the command line did not give are filled in too
    assert {"learning_rate", "warmup_steps"} <= set(printed["optimizer"]) and "seed" in printed["loop"]
    assert "[prorank] resuming" not in output
    assert logged_steps(out) == list(range(1, STEPS + 1))


@pytest.mark.parametrize("extra", [(), tuple(ASYNC)], ids=["sync-save", "async-save"])
def test_kill_9_then_restart_ends_with_the_uninterrupted_params(uninterrupted, tmp_path, extra):
    if extra:
        # kill while an async save is being written: the restart must skip the half-written
        # step and resume from the newest complete one
        proc = start_and_wait(tmp_path, mid_async_save, extra, poll_s=0.005)
    else:
        proc = start_and_wait(tmp_path, reached(3), extra)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    complete, _ = scan_steps(tmp_path / "checkpoints")
    assert complete and max(complete) < STEPS  # it really was cut short
    lines_before = len(logged_steps(tmp_path))
    output = run_to_end(tmp_path, extra)
    assert_resumed(tmp_path, output, max(complete), lines_before)
    assert not scan_steps(tmp_path / "checkpoints")[1]  # no half-written folder left behind
    for a, b in zip(final_params(tmp_path, STEPS), final_params(uninterrupted[0], STEPS)):
        np.testing.assert_array_equal(a, b)


def test_sigterm_saves_the_current_step_and_exits_cleanly(uninterrupted, tmp_path):
    proc = start_and_wait(tmp_path, reached(3))
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    logged = logged_steps(tmp_path)
    last = logged[-1]
    assert f"preemption signal: saved step {last}" in output
    complete, broken = scan_steps(tmp_path / "checkpoints")
    assert max(complete) == last and not broken
    # and the saved step is the step the uninterrupted run had at that point
    output = run_to_end(tmp_path)
    assert_resumed(tmp_path, output, last, len(logged))
    # without --show-config the config is one line that says where the resolved one is
    assert "resolved config:" not in output
    assert output.splitlines()[0] == (f"[prorank] config grpo_tiny with out_dir={tmp_path} "
                                      f"{' '.join(OVERRIDES)}; resolved in {tmp_path / 'run_config.json'} "
                                      "(--show-config prints it)")
    for a, b in zip(final_params(tmp_path, STEPS), final_params(uninterrupted[0], STEPS)):
        np.testing.assert_array_equal(a, b)
