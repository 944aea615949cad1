"""launch/stage_runner.py: both training stages refuse, up front and in the config's terms, a
batch that the mesh's data axes cannot split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers.env import xla_flags

REPO = Path(__file__).resolve().parents[2]

# 8 simulated CPU devices (XLA_FLAGS must be set before JAX starts, hence the subprocess).
SCRIPT = textwrap.dedent("""
    import json, sys
    from launch import config as cfglib
    from launch.train_grpo import run_grpo
    from launch.train_score import run_score

    out = {}
    for name, run, config in (("grpo", run_grpo, "grpo_tiny"), ("score", run_score, "score_tiny")):
        raw = cfglib.load_config(config, ["data.batch_size=3", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2",
                                          f"out_dir={sys.argv[1]}/{name}"])
        try:
            run(raw)
            out[name] = None
        except cfglib.RunConfigError as err:
            out[name] = str(err)
    print(json.dumps(out))
""")


def test_both_stages_refuse_a_batch_the_mesh_cannot_split(tmp_path):
    env = dict(os.environ, XLA_FLAGS=xla_flags(devices=8), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, config in (("grpo", "grpo_tiny"), ("score", "score_tiny")):
        assert errors[name] is not None, f"{name}: a batch of 3 on data x fsdp = 4 was accepted"
        assert f"{config}.yaml" in errors[name] and "data.batch_size=3" in errors[name]
        # The default rules split the batch over the data and fsdp axes: 2 x 2.
        assert "multiple of the mesh's batch split, 4" in errors[name]
        # Refused before the run started: no run folder was written.
        assert not (tmp_path / name).exists()
