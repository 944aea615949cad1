"""`--dry-run`: mesh, parameter shardings and memory per device, without allocating the model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np

from bench.common import QWEN25_05B
from launch import config as cfglib
from launch.dry_run import DryRunError, dry_run_report, print_dry_run
from prorank_jax import training
from prorank_jax.config import ModelConfig
from prorank_jax.pretrained import ModelSource
from tests.helpers.env import xla_flags

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, XLA_FLAGS=xla_flags(devices=8), JAX_PLATFORMS="cpu",
           PYTHONPATH=str(REPO))


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)


def qwen25_05b_folder(tmp_path) -> Path:
    """Qwen2.5-0.5B's config.json alone: no weights, which a dry run must not need."""
    folder = tmp_path / "qwen25-05b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dict(QWEN25_05B, architectures=["Qwen2ForCausalLM"])))
    return folder


def grpo_config_file(tmp_path) -> str:
    """The bundled Qwen2.5-0.5B stage-1 config, or an inline equivalent while it does not exist."""
    try:
        return str(cfglib.config_path("grpo_qwen25_05b"))
    except cfglib.RunConfigError:
        raw = cfglib.load_config("grpo_tiny")
        raw.pop("_source")
        raw["model"] = {"dtype": "bfloat16", "param_dtype": "float32", "remat": "full"}
        path = tmp_path / "grpo_qwen25_05b.yaml"
        path.write_text(json.dumps(raw))  # JSON is YAML
        return str(path)


def expected_qwen25_05b_param_bytes_per_device() -> int:
    """By hand, for the (data 2, fsdp 2, tensor 2) mesh and the default rules: every matrix is
    split 4 ways (fsdp x tensor), q/k/v biases 2 ways (tensor), norms replicated; float32."""
    c = QWEN25_05B
    d, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    q, kv = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    matrices = vocab * d + layers * (d * q + 2 * d * kv + q * d + 3 * d * inter)
    biases = layers * (q + 2 * kv)
    norms = layers * 2 * d + d
    return 4 * (matrices // 4 + biases // 2 + norms)


def test_qwen25_05b_dry_run_prints_shardings_without_allocating(tmp_path):
    folder = qwen25_05b_folder(tmp_path)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the forking pytest
    # process (which grows to GBs over the suite), while VmHWM is this process's own peak.
    code = """
        import re, sys
        import jax
        from launch import cli
        code = cli.main(sys.argv[1:])
        peak_kb = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
        live = sum(a.nbytes for a in jax.live_arrays())
        print("PEAK_KB", peak_kb, "LIVE_BYTES", live, "EXIT", code)
    """
    proc = run_python(code, "train-grpo", "--config", grpo_config_file(tmp_path), f"model.path={folder}",
                      "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", "--dry-run")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "mesh: {'data': 2, 'fsdp': 2, 'tensor': 2} over 8 devices" in out
    assert "494,032,768 parameters" in out
    param_lines = [line for line in out.splitlines() if re.match(r"\s+model/\S+\s+\(", line)]
    assert len(param_lines) == 14  # tied embeddings: no lm_head
    assert re.search(r"model/embed_tokens/embedding\s+\(151936, 896\)\s+float32\s+P\('tensor', 'fsdp'\)", out)
    assert re.search(r"model/layers/mlp/down_proj/kernel\s+\(24, 4864, 896\)\s+float32\s+P\(None, 'tensor', 'fsdp'\)",
                     out)
    mib = expected_qwen25_05b_param_bytes_per_device() / 2**20
    assert re.search(rf"params\s+{mib:.2f} MiB", out), (mib, out[-1500:])
    assert re.search(rf"optimizer\s+{2 * mib:.2f} MiB", out)  # AdamW mu + nu in float32
    assert re.search(rf"gradients\s+{mib:.2f} MiB", out)
    assert "activations not included" in out
    peak_kb, live_bytes = map(int, re.search(r"PEAK_KB (\d+) LIVE_BYTES (\d+) EXIT 0", out).groups())
    # the float32 model alone would be 1.84 GiB; nothing of it may have been allocated
    assert live_bytes < 2**20, live_bytes
    assert peak_kb * 1024 < 1 * 2**30, peak_kb


def test_report_matches_allocated_arrays_on_8_devices():
    """Allocate the bundled tiny model and its AdamW state with the reported shardings on a
    (2, 2, 2) mesh: the largest per-device footprint equals what the dry run reports."""
    code = """
        import json, jax, numpy as np
        from launch.dry_run import dry_run_report
        from prorank_jax import training
        from prorank_jax.pretrained import ModelSource, load_model

        src, mesh_cfg = ModelSource(), training.MeshConfig(data=2, fsdp=2, tensor=2)
        opt, loop = training.OptimizerConfig(), training.LoopConfig(steps=10)
        report = dry_run_report(src, mesh_cfg, opt, loop)
        config, params, _ = load_model(src)
        tx = training.make_optimizer(opt, loop.steps)
        mesh = mesh_cfg.build()
        shapes = jax.eval_shape(lambda p: training.init_train_state(p, tx), params)
        sh = training.state_shardings(shapes, tx, mesh)
        state = jax.jit(lambda p: training.init_train_state(p, tx), out_shardings=sh)(params)

        def on_device(tree):
            per = {}
            for x in jax.tree_util.tree_leaves(tree):
                for s in x.addressable_shards:
                    per[s.device.id] = per.get(s.device.id, 0) + s.data.nbytes
            return max(per.values())

        print(json.dumps({"report": [report.params_bytes, report.opt_state_bytes, report.num_params],
                          "real": [on_device(state.params), on_device(state.opt_state),
                                   sum(x.size for x in jax.tree_util.tree_leaves(params))]}))
    """
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["report"] == result["real"]


def test_data_parallel_totals_equal_real_arrays():
    """Pure data parallelism (whatever the device count here) replicates everything: per-device
    bytes are the bytes of the real params and AdamW state (bfloat16 params: bfloat16 moments)."""
    from prorank_jax.pretrained import load_model

    src = ModelSource(param_dtype="bfloat16")
    opt, loop = training.OptimizerConfig(), training.LoopConfig(steps=5)
    lines = []
    report = print_dry_run(src, training.MeshConfig(data=-1), opt, loop, print_fn=lines.append)
    config, params, _ = load_model(src)
    state = training.init_train_state(params, training.make_optimizer(opt, loop.steps))
    assert report.params_bytes == sum(x.nbytes for x in jax.tree_util.tree_leaves(state.params))
    assert report.opt_state_bytes == sum(x.nbytes for x in jax.tree_util.tree_leaves(state.opt_state))
    assert report.grads_bytes == report.params_bytes
    assert any(re.search(r"embed_tokens/embedding .* bfloat16 +P\(", line) for line in lines)


def test_unresolvable_model_path_names_it(tmp_path):
    try:
        dry_run_report(ModelSource(path=str(tmp_path / "missing")), training.MeshConfig(),
                       training.OptimizerConfig(), training.LoopConfig())
    except DryRunError as err:
        assert "missing" in str(err) and "config.json" in str(err)
    else:
        raise AssertionError("expected a DryRunError")


def test_activation_estimate_follows_remat():
    base = ModelConfig(**QWEN25_05B, dtype="bfloat16")
    from launch.dry_run import activation_bytes_per_token

    assert activation_bytes_per_token(base.replace(remat="full")) == 24 * 896 * 2
    assert activation_bytes_per_token(base) > 10 * activation_bytes_per_token(base.replace(remat="full"))
    assert np.isfinite(activation_bytes_per_token(base))
