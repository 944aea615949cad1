"""No libtpu start-up noise from `prorank` on a machine without a TPU (launch/backends.py),
nor transformers' notice that PyTorch is missing in a runtime-only install (launch/cli.py),
and --compile-for still reaching the TPU compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("libtpu", reason="the noise comes from libtpu: pip install -r requirements-tpu-aot.txt")

from launch import backends  # noqa: E402
from prorank_jax.data import bundled_tokenizer_dir  # noqa: E402
from prorank_jax.pretrained import bundled_warm_start_dir  # noqa: E402
from tests.test_runtime_without_torch import HIDE_TORCH  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TORCH_NOTICE = "PyTorch was not found"
# Lines libtpu 0.0.42.1 prints when JAX starts its TPU plugin on a machine without a TPU.
LIBTPU_NOISE = ("could not determine TPU", "Failed to find host bounds", "Logging before InitGoogle",
                "libtpu_init_utils", "unexpected worker hostname")


def noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(marker in line for marker in LIBTPU_NOISE)]


def user_env() -> dict:
    """A user's shell: no JAX_PLATFORMS (the tests' own subprocesses often set it). libtpu lets
    one process at a time start it (/tmp/libtpu_lockfile) and any other fails quietly, so a
    compile running beside this test would hide the noise: ALLOW_MULTIPLE_LIBTPU_LOAD lets
    every process here start it, as the only libtpu process on a user's machine does."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    return dict(env, PYTHONPATH=str(ROOT), ALLOW_MULTIPLE_LIBTPU_LOAD="1")


@pytest.fixture(scope="module")
def no_tpu():
    if backends.machine_has_tpu():
        pytest.skip("this machine has a TPU: JAX must start it, noise or not")


def test_starting_jax_here_prints_libtpu_noise(no_tpu):
    """The control: plain JAX on this machine does print libtpu's complaints, so the command
    test below would see them if the CLI let JAX probe the TPU."""
    proc = subprocess.run([sys.executable, "-c", "import jax; print(jax.devices()[0].platform)"],
                          env=user_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cpu"
    assert noise(proc.stderr), proc.stderr


def test_transformers_without_torch_prints_a_notice():
    """The control of the runtime-only install (`make demo`: no PyTorch): transformers says so."""
    proc = subprocess.run([sys.executable, "-c", HIDE_TORCH + "import transformers"], env=user_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert TORCH_NOTICE in proc.stderr


def test_rank_prints_no_libtpu_noise(no_tpu, tmp_path):
    """`prorank rank` as in a runtime-only install: libtpu present, PyTorch absent."""
    model = tmp_path / "model"
    shutil.copytree(bundled_warm_start_dir(), model)
    for file in bundled_tokenizer_dir().iterdir():
        shutil.copy(file, model)
    docs = tmp_path / "docs.txt"
    docs.write_text("Photosynthesis makes sugar from light.\nThe cat sat on the mat.\n")
    argv = ["prorank", "rank", "--model", str(model), "--query", "how do plants make food?", "--documents", str(docs)]
    script = HIDE_TORCH + f"import sys\nsys.argv = {argv!r}\nfrom launch.cli import main\nsys.exit(main())\n"
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=user_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["rank", "score", "line", "document"]
    assert len(proc.stdout.splitlines()) == 3
    assert not noise(proc.stdout + proc.stderr), proc.stderr
    assert TORCH_NOTICE not in proc.stderr


def test_compile_for_still_gets_the_tpu_compiler_after_the_cli_skipped_the_tpu_backend(no_tpu):
    """What `--compile-for` does after the CLI's choice: TPU device descriptions from libtpu,
    while the process's own backend is the CPU."""
    script = ("from launch.backends import skip_tpu_probe; print(skip_tpu_probe())\n"
              "import jax; from prorank_jax import aot\n"
              "devices = aot.topology_devices(aot.resolve_topology('v5e-8'))\n"
              "print(len(devices), devices[0].device_kind, jax.devices()[0].platform)\n")
    proc = subprocess.run([sys.executable, "-c", script], env=user_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["cpu", "8 TPU v5 lite cpu"]


@pytest.mark.parametrize("environ, has_tpu, libtpu, expected", [
    ({}, False, True, "cuda,cpu"),  # a GPU machine keeps its GPU as the default backend
    ({"JAX_PLATFORMS": ""}, False, True, None),  # the user chose (JAX's automatic choice)
    ({"JAX_PLATFORMS": "tpu"}, False, True, None),
    ({}, True, True, None),  # a TPU VM: JAX starts the TPU as always
    ({}, False, False, None),  # no libtpu: nothing to quiet
])
def test_platforms_without_tpu(environ, has_tpu, libtpu, expected):
    assert backends.platforms_without_tpu(environ, has_tpu, libtpu, ["cuda", "tpu", "cpu"]) == expected


@pytest.mark.parametrize("variable", backends.TPU_HOST_VARIABLES)
def test_a_tpu_host_variable_counts_as_a_tpu(variable):
    assert backends.machine_has_tpu({variable: "v5litepod-8"})


def test_nothing_changes_once_jax_has_started(monkeypatch):
    """prorank as a library (this test process has started JAX): the CLI's choice stays out."""
    import jax

    jax.devices()
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    assert backends.skip_tpu_probe() is None
    assert "JAX_PLATFORMS" not in os.environ
