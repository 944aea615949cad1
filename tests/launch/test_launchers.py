"""launch/tpu_pod.sh and launch/multi_gpu.sh: syntax, usage, and the command they really run
(with stand-ins for gcloud and python, so nothing leaves this machine)."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = [REPO / "launch" / "tpu_pod.sh", REPO / "launch" / "multi_gpu.sh"]
DIST_VARS = ("PRORANK_COORDINATOR", "PRORANK_NUM_PROCESSES", "PRORANK_PROCESS_ID", "PRORANK_DISTRIBUTED")


def run(args, env=None, **kw) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in DIST_VARS + ("TPU_NAME", "TPU_ZONE", "TPU_PROJECT")}
    return subprocess.run(["bash", *map(str, args)], env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=60, **kw)


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_python(tmp_path: Path) -> Path:
    """Stands in for the interpreter: records its cwd, distributed env vars and arguments."""
    record = tmp_path / "record.txt"
    return executable(tmp_path / "fake-python", f"""#!/usr/bin/env bash
{{ echo "cwd=$PWD"
  for v in {' '.join(DIST_VARS)}; do echo "$v=${{!v-<unset>}}"; done
  for a in "$@"; do echo "arg=$a"; done; }} > {shlex.quote(str(record))}
""")


def recorded(tmp_path: Path) -> list[str]:
    return (tmp_path / "record.txt").read_text().splitlines()


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_syntax_and_usage(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    no_args = run([script])
    assert no_args.returncode == 2 and "Usage:" in no_args.stderr
    helped = run([script, "--help"])
    assert helped.returncode == 0 and "Usage:" in helped.stdout and "set -euo" not in helped.stdout
    bad = run([script, "--bogus"])
    assert bad.returncode == 2 and "unknown option --bogus" in bad.stderr


def test_multi_gpu_single_host_is_one_plain_process(tmp_path):
    py = fake_python(tmp_path)
    # a stale multi-process setting in the shell must not leak into a single-host run
    proc = run([REPO / "launch/multi_gpu.sh", "--python", py, "train-grpo", "--config", "grpo_qwen25_05b", "a=b c"],
               env={"PRORANK_COORDINATOR": "", "PRORANK_DISTRIBUTED": "auto"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rec = recorded(tmp_path)
    assert f"cwd={REPO}" in rec
    assert all(f"{v}=<unset>" in rec for v in DIST_VARS)
    assert [r for r in rec if r.startswith("arg=")] == [
        "arg=-m", "arg=launch.cli", "arg=train-grpo", "arg=--config", "arg=grpo_qwen25_05b", "arg=a=b c"]


def test_multi_gpu_multi_host_sets_the_three_variables(tmp_path):
    py = fake_python(tmp_path)
    proc = run([REPO / "launch/multi_gpu.sh", "--coordinator", "10.0.0.1:1234", "--num-processes", "2",
                "--process-id", "1", "--python", py, "--", "train-score", "--config", "score_qwen25_05b"])
    assert proc.returncode == 0, proc.stderr
    rec = recorded(tmp_path)
    assert {"PRORANK_COORDINATOR=10.0.0.1:1234", "PRORANK_NUM_PROCESSES=2", "PRORANK_PROCESS_ID=1",
            "PRORANK_DISTRIBUTED=<unset>"} <= set(rec)
    # the same from the environment
    proc = run([REPO / "launch/multi_gpu.sh", "--python", py, "rank"],
               env={"PRORANK_COORDINATOR": "h:1", "PRORANK_NUM_PROCESSES": "3", "PRORANK_PROCESS_ID": "2"})
    assert proc.returncode == 0, proc.stderr
    assert {"PRORANK_COORDINATOR=h:1", "PRORANK_NUM_PROCESSES=3", "PRORANK_PROCESS_ID=2"} <= set(recorded(tmp_path))


@pytest.mark.parametrize("args, message", [
    (["--num-processes", "2", "--process-id", "0", "rank"], "need --coordinator"),
    (["--coordinator", "h:1", "--num-processes", "2", "--process-id", "2", "rank"], "must be 0 .. 1"),
    (["--num-processes", "zero", "rank"], "positive integer"),
    (["--coordinator", "h:1"], "no prorank command"),
    # without a process count each host would run its own 1-process job into the same out_dir
    (["--coordinator", "h:1", "--process-id", "1", "rank"], "without --num-processes"),
    (["--process-id", "0", "rank"], "without --num-processes"),
])
def test_multi_gpu_rejects_inconsistent_settings(args, message):
    proc = run([REPO / "launch/multi_gpu.sh", *args])
    assert proc.returncode == 2 and message in proc.stderr


def test_multi_gpu_refuses_a_coordinator_from_the_environment_without_a_count():
    proc = run([REPO / "launch/multi_gpu.sh", "rank"], env={"PRORANK_COORDINATOR": "h:1", "PRORANK_PROCESS_ID": "1"})
    assert proc.returncode == 2 and "without --num-processes" in proc.stderr


def test_tpu_pod_runs_gcloud_on_all_workers(tmp_path):
    """A stand-in gcloud records its arguments; the --command it got is then run by bash here,
    as a worker would, to check the quoting end to end."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    args_file = tmp_path / "gcloud-args"
    executable(bin_dir / "gcloud", f"""#!/usr/bin/env bash
for a in "$@"; do printf '%s\\0' "$a"; done > {shlex.quote(str(args_file))}
""")
    py = fake_python(tmp_path)
    workdir = tmp_path / "checkout dir"
    workdir.mkdir()
    proc = run([REPO / "launch/tpu_pod.sh", "--name", "my-v4-8", "--zone", "us-central2-b", "--project", "proj",
                "--repo", workdir, "--python", py, "--", "train-grpo", "--config", "grpo_qwen25_05b",
                "model.path=dir with space", "x='q'"],
               env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr
    args = args_file.read_text().split("\0")[:-1]
    assert args[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-v4-8"]
    assert "--worker=all" in args and args[args.index("--zone") + 1] == "us-central2-b"
    assert args[args.index("--project") + 1] == "proj"
    remote = args[args.index("--command") + 1]
    assert "PRORANK_DISTRIBUTED=auto" in remote

    worker = run(["-c", remote])
    assert worker.returncode == 0, worker.stderr
    rec = recorded(tmp_path)
    assert f"cwd={workdir}" in rec and "PRORANK_DISTRIBUTED=auto" in rec
    assert [r for r in rec if r.startswith("arg=")] == [
        "arg=-m", "arg=launch.cli", "arg=train-grpo", "arg=--config", "arg=grpo_qwen25_05b",
        "arg=model.path=dir with space", "arg=x='q'"]


def test_tpu_pod_needs_name_and_zone_and_prints(tmp_path):
    proc = run([REPO / "launch/tpu_pod.sh", "--zone", "z", "train-grpo"])
    assert proc.returncode == 2 and "--name and --zone" in proc.stderr
    proc = run([REPO / "launch/tpu_pod.sh", "--print", "--log", "grpo.log", "train-grpo", "--config", "c"],
               env={"TPU_NAME": "pod", "TPU_ZONE": "europe-west4-a"})
    assert proc.returncode == 0, proc.stderr
    printed = shlex.split(proc.stdout)
    assert printed[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
    remote = printed[printed.index("--command") + 1]
    assert remote.startswith("cd ~/prorank-jax && nohup env PRORANK_DISTRIBUTED=auto ")
    assert remote.endswith("> grpo.log 2>&1 < /dev/null &")


def test_tpu_pod_without_gcloud_says_so(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "sed", "env"):
        src = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if src:
            (bin_dir / tool).symlink_to(src)
    proc = subprocess.run(["bash", str(REPO / "launch/tpu_pod.sh"), "--name", "n", "--zone", "z", "train-grpo"],
                          env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 127 and "gcloud not found" in proc.stderr


# ----------------------------------------------------------------------------- launch/runner.py
class InitializeRecorder:
    """Stands in for jax.distributed.initialize: records the keyword arguments of each call."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, *args, **kwargs):
        assert not args, f"positional arguments are easy to misorder: {args}"
        self.calls.append(kwargs)


@pytest.fixture
def initialize(monkeypatch):
    import jax

    from launch import rollcall

    recorder = InitializeRecorder()
    monkeypatch.setattr(jax.distributed, "initialize", recorder)
    # No partners to answer the roll call here (tests/launch/test_distributed_start.py runs it).
    monkeypatch.setattr(rollcall, "answer_the_roll", lambda *args: None)
    monkeypatch.setattr(rollcall, "call_the_roll", lambda server, *args: server.close())
    for var in DIST_VARS:
        monkeypatch.delenv(var, raising=False)
    return recorder


def test_initialize_distributed_with_the_launchers_variables(initialize, monkeypatch):
    from launch.runner import maybe_initialize_distributed

    # what launch/multi_gpu.sh exports on host 1 of 2
    monkeypatch.setenv("PRORANK_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("PRORANK_NUM_PROCESSES", "2")
    monkeypatch.setenv("PRORANK_PROCESS_ID", "1")
    maybe_initialize_distributed()
    assert initialize.calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}]
    assert all(type(v) is int for k, v in initialize.calls[0].items() if k != "coordinator_address")


def test_initialize_distributed_auto_lets_jax_discover(initialize, monkeypatch):
    """launch/tpu_pod.sh: PRORANK_DISTRIBUTED=auto, JAX finds coordinator and ids itself (and it
    wins over a coordinator left in the environment)."""
    from launch.runner import maybe_initialize_distributed

    monkeypatch.setenv("PRORANK_DISTRIBUTED", "auto")
    maybe_initialize_distributed()
    monkeypatch.setenv("PRORANK_COORDINATOR", "h:1")
    maybe_initialize_distributed()
    assert initialize.calls == [{}, {}]


@pytest.mark.parametrize("env", [{}, {"PRORANK_COORDINATOR": ""}, {"PRORANK_DISTRIBUTED": ""}],
                         ids=["unset", "empty-coordinator", "empty-distributed"])
def test_single_process_does_not_initialize(initialize, monkeypatch, env):
    from launch.runner import maybe_initialize_distributed

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    maybe_initialize_distributed()
    assert initialize.calls == []


@pytest.mark.parametrize("env, message", [
    ({"PRORANK_PROCESS_ID": "0"}, "PRORANK_NUM_PROCESSES is not set"),
    ({"PRORANK_NUM_PROCESSES": "2"}, "PRORANK_PROCESS_ID is not set"),
    ({"PRORANK_NUM_PROCESSES": "two", "PRORANK_PROCESS_ID": "0"}, "PRORANK_NUM_PROCESSES='two': expected an integer >= 1"),
    ({"PRORANK_NUM_PROCESSES": "0", "PRORANK_PROCESS_ID": "0"}, "PRORANK_NUM_PROCESSES=0: expected an integer >= 1"),
    ({"PRORANK_NUM_PROCESSES": "2", "PRORANK_PROCESS_ID": "2"}, "PRORANK_PROCESS_ID=2: expected an integer in 0..1"),
    ({"PRORANK_NUM_PROCESSES": "2", "PRORANK_PROCESS_ID": "-1"}, "PRORANK_PROCESS_ID=-1: expected an integer in 0..1"),
    ({"PRORANK_DISTRIBUTED": "yes"}, "PRORANK_DISTRIBUTED='yes': expected 'auto' or unset"),
], ids=["no-count", "no-id", "not-a-number", "zero-processes", "id-too-large", "negative-id", "not-auto"])
def test_bad_distributed_settings_are_named_before_initializing(initialize, monkeypatch, env, message):
    """A coordinator without a usable process count and id, or an unknown PRORANK_DISTRIBUTED,
    raises an error naming the variable rather than starting a job that waits for hosts."""
    from launch.runner import maybe_initialize_distributed

    monkeypatch.setenv("PRORANK_COORDINATOR", "h:1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError) as err:
        maybe_initialize_distributed()
    assert message in str(err.value)
    assert initialize.calls == []


@pytest.mark.parametrize("command", ["train-grpo", "train-score"])
def test_train_commands_initialize_before_loading_the_config(initialize, monkeypatch, tmp_path, command):
    """Both training commands call it first thing: with a coordinator set, initialize is recorded
    even though the config then fails to load."""
    from launch import cli
    from launch.config import RunConfigError

    monkeypatch.setenv("PRORANK_COORDINATOR", "h:1")
    monkeypatch.setenv("PRORANK_NUM_PROCESSES", "4")
    monkeypatch.setenv("PRORANK_PROCESS_ID", "3")
    with pytest.raises(RunConfigError, match="no such config file"):
        cli.main([command, "--config", str(tmp_path / "missing.yaml")])
    assert initialize.calls == [{"coordinator_address": "h:1", "num_processes": 4, "process_id": 3}]
