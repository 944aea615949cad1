"""Watching a run: TensorBoard event files (read back with TensorBoard's own reader), W&B in
offline mode, tokens/s and MFU, jax.profiler traces of loop.profile_steps; and the pure
parts (event file segments, FLOP count, peak lookup, the progress bar's postfix)."""

from __future__ import annotations

import math
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from prorank_jax import aot, model, training, utilisation
from prorank_jax.config import ModelConfig
from prorank_jax.tensorboard_events import ScalarEventWriter
from prorank_jax.wandb_logging import WANDB_REQUIREMENT, check_wandb_config
from tests.helpers.run_watch import (assert_same_scalars, metrics_scalars, profile_traces, tensorboard_scalars,
                                     wandb_history, wandb_scalars)


# ----------------------------------------------------------------------------- event files
def test_event_files_are_written_whole_in_segments_and_read_back_by_tensorboard(tmp_path):
    writer = ScalarEventWriter(tmp_path / "tb", rows_per_file=2, flush_every_s=0)
    rows = [{"step": s, "time": 1000.0 + s, "loss": 1.0 / s, "eval/ndcg@10": 0.1 * s, "lengths": [1, 2]}
            for s in range(1, 6)]
    rows[2]["loss"] = float("nan")
    contents = []
    for row in rows[:2]:
        writer.log_row(row)
        contents.append(writer.path.read_bytes())
    # A rewrite extends what was there: a reader tailing the file reads on from its offset.
    assert contents[1].startswith(contents[0]) and len(contents[1]) > len(contents[0])
    for row in rows[2:]:
        writer.log_row(row)
    writer.close()
    files = sorted(p.name for p in (tmp_path / "tb").iterdir())
    assert len(files) == 3 and all("tfevents" in f for f in files)  # 2 + 2 + 1 rows
    assert files[-1].endswith(".00002")
    scalars = tensorboard_scalars(tmp_path / "tb")
    assert_same_scalars(scalars, metrics_scalars(rows), float32=True)  # the list is not a scalar


def test_event_writer_refuses_an_empty_segment_size(tmp_path):
    with pytest.raises(ValueError, match="rows_per_file"):
        ScalarEventWriter(tmp_path, rows_per_file=0)


# ----------------------------------------------------------------------------- FLOPs and peaks
def _config(tie: bool) -> ModelConfig:
    return ModelConfig(vocab_size=50, hidden_size=16, intermediate_size=40, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=tie)


@pytest.mark.parametrize("tie", [True, False])
def test_matmul_params_are_the_decoder_layers_weights(tie):
    c = _config(tie)
    shapes = jax.eval_shape(lambda: model.init_params(c, jax.random.key(0)))
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    per_layer = c.hidden_size * q + 2 * c.hidden_size * kv + q * c.hidden_size + 3 * c.hidden_size * c.intermediate_size
    assert utilisation.matmul_params(shapes) == c.num_hidden_layers * per_layer  # no embedding, no LM head
    assert utilisation.train_flops_per_token(shapes, updates_per_step=2) == 12 * c.num_hidden_layers * per_layer


@pytest.mark.parametrize("kind, generation", [("TPU v4", "v4"), ("TPU v5 lite", "v5e"), ("TPU v5e", "v5e"),
                                              ("TPU v5", "v5p"), ("TPU v5p", "v5p"), ("TPU v6 lite", "v6e"),
                                              ("TPU v6e", "v6e")])
def test_a_tpu_device_kind_finds_its_chip_in_the_compile_for_table(kind, generation):
    assert aot.chip_of_device_kind(kind) is aot.CHIPS[generation]


@pytest.mark.parametrize("kind", ["cpu", "TPU v99", "NVIDIA H100 80GB HBM3"])
def test_other_device_kinds_have_no_tpu_chip(kind):
    assert aot.chip_of_device_kind(kind) is None


def test_gpu_peaks_match_the_pcie_h100_before_the_sxm_one():
    assert utilisation.gpu_peak_flops("NVIDIA H100 PCIe") == 756e12
    assert utilisation.gpu_peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert utilisation.gpu_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert utilisation.gpu_peak_flops("Tesla T4") is None


def _device(platform, kind, process=0):
    return types.SimpleNamespace(platform=platform, device_kind=kind, process_index=process)


def test_peak_adds_accelerators_and_counts_a_process_cpu_once():
    rate = utilisation.measured_cpu_matmul_flops()
    assert math.isfinite(rate) and rate > 0
    tpus = [_device("tpu", "TPU v5 lite") for _ in range(4)]
    assert utilisation.peak_flops(tpus) == 4 * 197e12
    # Forced host devices share one process's cores: its measured rate counts once.
    assert utilisation.peak_flops([_device("cpu", "cpu"), _device("cpu", "cpu"), _device("cpu", "cpu", 1)]) == 2 * rate
    assert utilisation.peak_flops(tpus + [_device("tpu", "TPU v99")]) is None
    assert utilisation.mfu(6e12, 2.0, 1e13) == pytest.approx(0.3)
    assert utilisation.mfu(6e12, 2.0, None) is None


def test_the_progress_bar_shows_headline_tokens_per_second_and_mfu():
    row = {"step": 4, "loss": 1.39004, "accuracy": 0.0, "tokens_per_s": 4872.1177, "mfu": 0.0492545}
    assert training.progress_postfix(row, ("loss", "accuracy", "margin")) == {
        "loss": "1.39", "accuracy": "0", "tok/s": "4,872", "mfu": "4.93%"}


def test_each_process_of_several_traces_into_its_own_folder(tmp_path):
    from prorank_jax.profiling import profile_dir

    assert str(profile_dir(tmp_path, 0, 1)) == str(tmp_path / "profile")
    # Two processes on one host would both write <host>.xplane.pb into one folder.
    assert str(profile_dir(tmp_path, 1, 2)) == str(tmp_path / "profile" / "process_1")
    assert str(profile_dir("gs://bucket/run", 0, 4)) == "gs://bucket/run/profile/process_0"


def test_a_failing_watcher_is_logged_and_the_run_goes_on(tmp_path, caplog, monkeypatch):
    logger = training.MetricsLogger(tmp_path, total_steps=2, progress_bar=False, tensorboard=True)
    (writer,) = logger._sinks
    writer.flush_every_s = 0

    def unavailable():
        raise OSError("503 from the bucket")

    monkeypatch.setattr(writer, "flush", unavailable)
    with caplog.at_level("WARNING", logger="prorank_jax.training"):
        logger.log(1, {"loss": 0.5})
    monkeypatch.undo()  # the bucket is back
    logger.log(2, {"loss": 0.25})
    logger.close()
    assert [r["loss"] for r in training.read_metrics(tmp_path)] == [0.5, 0.25]
    assert "OSError: 503 from the bucket" in caplog.text and "training goes on" in caplog.text
    # The row whose write failed goes out with the next one.
    assert tensorboard_scalars(tmp_path / "tensorboard") == {(1, "loss"): [0.5], (2, "loss"): [0.25]}


# ----------------------------------------------------------------------------- config validation
@pytest.mark.parametrize("value, message", [
    ([3, 1], r"1 <= first <= last <= loop.steps=4"),
    ([0, 2], r"1 <= first"),
    ([1, 5], r"loop.steps=4"),
    ([1], "two step numbers"),
    ([1.5, 2], "two step numbers"),
    ("1,2", "two step numbers"),
])
def test_profile_steps_must_be_two_steps_of_the_run(value, message):
    with pytest.raises(ValueError, match=rf"loop.profile_steps=.*{message}"):
        training.LoopConfig(steps=4, profile_steps=value)


@pytest.mark.parametrize("value, message", [
    ({"entity": "me"}, "loop.wandb.project is required"),
    ("my-project", "must be a mapping"),
    ({"project": "p", "projct": "q"}, r"unknown key\(s\) \['loop.wandb.projct'\]"),
    ({"project": "p", "mode": "sometimes"}, "loop.wandb.mode='sometimes' must be one of"),
    ({"project": "p", "tags": "a,b"}, "loop.wandb.tags='a,b' must be a list"),
])
def test_wandb_config_errors_name_the_key(value, message):
    with pytest.raises(ValueError, match=message):
        check_wandb_config(value)


def test_wandb_configured_without_wandb_installed_says_what_to_install(tmp_path, monkeypatch):
    from prorank_jax.wandb_logging import WandbRun

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(RuntimeError, match=f"pip install {WANDB_REQUIREMENT}"):
        WandbRun({"project": "p"}, tmp_path)


# ----------------------------------------------------------------------------- one watched run
STEPS, TOKENS = 4, 24


@pytest.fixture(scope="module")
def watched_run(tmp_path_factory):
    """run_loop with a real jitted train step (a linear model), TensorBoard, W&B offline and
    a profile of steps 2..3; validations at steps 0, 2 and 4 log eval rows too."""
    out = tmp_path_factory.mktemp("watched")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    params = {"q_proj": {"kernel": jnp.ones((8, 8)) * 0.1}, "embed_tokens": {"embedding": jnp.ones((5, 8))}}
    optimizer = optax.sgd(0.1)
    mesh = training.MeshConfig().build()
    state = training.init_train_state(params, optimizer)
    sharding = training.state_shardings(state, optimizer, mesh)
    batch = {"x": np.ones((len(jax.devices()) * 2, 8), np.float32)}

    def loss_fn(params, batch):
        loss = jnp.mean((batch["x"] @ params["q_proj"]["kernel"]) ** 2)
        return loss, {"mean_x": jnp.mean(batch["x"])}

    train_step = training.make_train_step(loss_fn, optimizer, mesh=mesh, state_sharding=sharding, batch_example=batch)
    loop = training.LoopConfig(steps=STEPS, log_every=1, eval_every=2, progress_bar=False, profile_steps=(2, 3),
                               wandb={"project": "prorank-test", "dir": str(out / "wandb_dir")})
    try:
        training.run_loop(state=state, start_step=0, train_step=train_step,
                          produce=lambda state, rng: training.StepOutput(batch, {"fraction": 0.5}, tokens=TOKENS),
                          loop=loop, out_dir=out, base_rng=jax.random.key(0), updates_per_step=2,
                          evaluate=lambda state: {"ndcg@10": float(state.params["q_proj"]["kernel"][0, 0])})
    finally:
        mp.undo()
    return out


def test_tensorboard_holds_every_scalar_of_metrics_jsonl(watched_run):
    rows = training.read_metrics(watched_run)
    assert [r["step"] for r in rows] == [0, 1, 2, 2, 3, 4, 4]  # a train row per step, eval at 0, 2, 4
    expected = metrics_scalars(rows)
    assert (2, "eval/ndcg@10") in expected and (3, "mfu") in expected and (1, "fraction") in expected
    assert_same_scalars(tensorboard_scalars(watched_run / "tensorboard"), expected, float32=True)


def test_wandb_offline_run_holds_every_scalar_of_metrics_jsonl(watched_run):
    rows = training.read_metrics(watched_run)
    history = wandb_history(watched_run / "wandb_dir")
    # Rows logged at the same step (train and eval at steps 2 and 4) are one W&B history row.
    assert [h["_step"] for h in history] == [0, 1, 2, 3, 4]
    assert_same_scalars(wandb_scalars(history), metrics_scalars(rows))


def test_mfu_is_the_model_flops_of_the_tokens_over_the_peak(watched_run):
    train_rows = [r for r in training.read_metrics(watched_run) if "loss" in r]
    # mfu / tokens_per_s = FLOPs per token / peak: 6 x 64 kernel weights (the embedding is
    # not a matmul) x 2 updates per step, against this process's measured CPU rate.
    per_token = 6 * 64 * 2 / utilisation.peak_flops()
    for row in train_rows:
        assert row["mfu"] > 0 and row["mfu"] / row["tokens_per_s"] == pytest.approx(per_token, rel=1e-9)


def test_the_profile_traces_the_chosen_steps_of_the_train_step(watched_run):
    (trace,) = profile_traces(watched_run)  # one host, one trace
    data = trace.read_bytes()
    assert b"jit_train_step" in data  # the update's program, by the name make_train_step gives it
    assert b"train" in data and b"step_num" in data  # the StepTraceAnnotation of each traced step


# ----------------------------------------------------------------------------- a bucket
def test_event_files_and_a_profile_reach_a_bucket_whole(tmp_path, monkeypatch):
    """On a GCS emulator (tests/helpers/gcs_emulator.py, from the gs:// path work of issue 28;
    skipped on a tree without it): the event files are objects written whole, TensorBoard's
    reader reads them from the bucket (through gcsfs), and a profile traced locally is copied in."""
    gcs = pytest.importorskip("tests.helpers.gcs_emulator")
    from etils import epath

    from prorank_jax.profiling import copy_tree

    with gcs.gcs_emulator("watch", tmp_path / "gcs") as url:
        for name, value in gcs.client_env(url).items():
            monkeypatch.setenv(name, value)
        writer = ScalarEventWriter("gs://watch/run/tensorboard", rows_per_file=2, flush_every_s=0)
        rows = [{"step": s, "time": 100.0 + s, "loss": 1.0 / s} for s in range(1, 6)]
        for row in rows:
            writer.log_row(row)
        writer.close()
        assert len(list(epath.Path("gs://watch/run/tensorboard").iterdir())) == 3
        assert_same_scalars(tensorboard_scalars("gs://watch/run/tensorboard"), metrics_scalars(rows), float32=True)
        local = tmp_path / "trace" / "plugins" / "profile" / "t"
        local.mkdir(parents=True)
        (local / "host.xplane.pb").write_bytes(b"trace bytes")
        copy_tree(str(tmp_path / "trace"), epath.Path("gs://watch/run/profile"))
        assert epath.Path("gs://watch/run/profile/plugins/profile/t/host.xplane.pb").read_bytes() == b"trace bytes"
