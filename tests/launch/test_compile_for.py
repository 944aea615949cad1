"""`--compile-for TOPOLOGY`: the bundled tiny configs' programs compiled by the real TPU
compiler (libtpu, installed by requirements-tpu-aot.txt) on this CPU machine."""

from __future__ import annotations

import json
import math

import jax
import pytest

pytest.importorskip("libtpu", reason="the TPU compiler: pip install -r requirements-tpu-aot.txt")

from launch import cli  # noqa: E402
from launch import compile_for  # noqa: E402
from launch import config as cfglib  # noqa: E402
from launch.runner import build_sections  # noqa: E402
from prorank_jax import aot  # noqa: E402
from rl.config import GRPOConfig  # noqa: E402
from scoring.losses import ScoreLossConfig  # noqa: E402

RANDOM_INIT = ("model.path=null",)  # the bundled tiny config.json, no run folder needed


def sections_of(name: str, **stage):
    return build_sections(cfglib.load_config(name, RANDOM_INIT), **stage)[0]


def compile_reports(topology: str, grpo_programs: tuple[str, ...]) -> dict[str, aot.ProgramReport]:
    score = sections_of("score_tiny", loss=ScoreLossConfig)
    grpo = sections_of("grpo_tiny", grpo=GRPOConfig)
    setup = compile_for.setup_for(topology, score)
    specs = compile_for.score_programs(setup, score)
    grpo_setup = compile_for.setup_for(topology, grpo)
    specs += [s for s in compile_for.grpo_programs(grpo_setup, grpo) if s.name in grpo_programs]
    report = aot.compile_programs(setup.topology, setup.devices, dict(setup.mesh.shape), specs)
    return {p.name: p for p in report.programs}, setup


# About 15 s of CPU per TPU compile even for the tiny model: the sampler and the log-prob
# programs are compiled by bench/compile_for.sh (bench/RESULTS.md).
@pytest.fixture(scope="module")
def v5e():
    return compile_reports("v5e:2x4", ("GRPO train step",))


@pytest.fixture(scope="module")
def v4():
    return compile_reports("v4:2x2x1", ("GRPO train step",))


def test_every_program_compiles_for_both_topologies(v5e, v4):
    # "validation scoring" is the Reranker's scorer (scoring.reranker.jitted_scorer) on one chip.
    assert set(v5e[0]) == set(v4[0]) == {"score train step", "validation scoring", "GRPO train step"}
    assert len(v5e[1].devices) == 8 and v5e[1].devices[0].device_kind == "TPU v5 lite"
    assert len(v4[1].devices) == 4 and v4[1].devices[0].device_kind == "TPU v4"  # megacore: one device per chip


@pytest.mark.parametrize("fixture", ["v5e", "v4"])
def test_report_numbers_are_positive_and_add_up(fixture, request):
    reports, setup = request.getfixturevalue(fixture)
    for p in reports.values():
        assert p.argument_bytes > 0 and p.output_bytes > 0 and p.flops > 0 and p.bytes_accessed > 0, p
        assert p.compile_s > 0 and p.roofline_s > 0
        assert p.total_bytes == p.argument_bytes + p.output_bytes - p.alias_bytes + p.temp_bytes + p.resident_bytes
        assert p.fits and p.total_bytes < p.hbm_bytes == setup.topology.chip.hbm_bytes
        chip = setup.topology.chip
        assert p.roofline_s == max(p.flops / chip.peak_bf16_flops, p.bytes_accessed / chip.hbm_bytes_per_s)
    step = reports["score train step"]
    # The train step donates its state: every state buffer comes back aliased, and the
    # arguments are the state plus the batch. The TPU pads small arrays to its (8, 128)
    # tiles, so the compiler's bytes are at least what the shardings put on a chip.
    state_bytes = aot.per_chip_bytes(setup.state)
    assert state_bytes <= step.alias_bytes < step.argument_bytes < 2 * state_bytes


@pytest.mark.parametrize("fixture", ["v5e", "v4"])
def test_train_step_flops_corrected_for_the_layer_scan(fixture, request):
    """6 N tokens for the layers' matmuls (stage 2 reads two LM-head columns, no vocab matmul)
    plus the attention scores and values (forward 4 x rows x L^2 x heads x head_dim per
    layer, x3 with the backward), per chip."""
    reports, setup = request.getfixturevalue(fixture)
    c = setup.config
    data = sections_of("score_tiny", loss=ScoreLossConfig)["data"]
    _, length = compile_for._largest_bucket(setup.tokenizer, c, data)
    rows = data.batch_size * (1 + data.num_negatives)
    layer_matrices = sum(math.prod(x.shape) for path, x in jax.tree_util.tree_flatten_with_path(setup.state.params)[0]
                         if "layers" in jax.tree_util.keystr(path) and "kernel" in jax.tree_util.keystr(path))
    attention = 3 * 4 * rows * length**2 * c.num_attention_heads * c.head_dim * c.num_hidden_layers
    expected = (6 * layer_matrices * rows * length + attention) / len(setup.devices)
    step = reports["score train step"]
    assert step.flops == pytest.approx(expected, rel=0.10)
    # XLA counted one of the two layers: the correction is what brings it to the expected number.
    assert step.compiler_flops < 0.75 * expected


def test_too_large_config_exits_non_zero_naming_the_program(tmp_path, capsys):
    wide = dict(json.loads((cfglib.CONFIG_DIR.parent.parent / "prorank_jax/data/bundled/tiny_model.json").read_text()),
                hidden_size=8192, intermediate_size=32768, num_attention_heads=64, num_key_value_heads=8)
    (tmp_path / "config.json").write_text(json.dumps(wide))
    code = cli.main(["train-score", "--config", "score_tiny", "--compile-for", "v5e:2x4", "model.path=null",
                     f"model.config={tmp_path}", "eval_data=null", f"out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == compile_for.EXIT_DOES_NOT_FIT
    assert "score train step does not fit a TPU v5e chip of v5e:2x4" in err
    assert "GiB short" in err and "mesh.fsdp" in err
    report = json.loads((tmp_path / "run" / "compile_report.json").read_text())
    step = report["programs"][0]
    assert report["fits"] is False and step["total_bytes"] > 16 * aot.GiB
    # The compiler refuses it (its temporaries alone exceed HBM); the report keeps what it said.
    assert step["temp_bytes"] > 16 * aot.GiB and "RESOURCE_EXHAUSTED" in step["compiler_error"]


def test_unknown_topology_is_a_clear_error(capsys):
    code = cli.main(["train-grpo", "--config", "grpo_tiny", "--compile-for", "v5e-9", "model.path=null"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown TPU topology 'v5e-9'" in err and "v5litepod-8" in err


def test_programs_for_a_tpu_trace_attention_as_a_tpu_run_does(monkeypatch):
    """This CPU host would pick rowwise attention for 32 queries (its CPU-only path); a
    program compiled for TPU chips must trace what a TPU run traces instead."""
    from jax.sharding import NamedSharding, PartitionSpec

    from prorank_jax import attention

    rowwise_calls = []
    rowwise = attention.rowwise_attention
    monkeypatch.setattr(attention, "rowwise_attention", lambda *a, **k: rowwise_calls.append(1) or rowwise(*a, **k))
    topology = aot.resolve_topology("v5e:2x4")
    devices = aot.topology_devices(topology)
    on_chips = NamedSharding(jax.sharding.Mesh(devices, ("data",)), PartitionSpec("data"))
    q = jax.ShapeDtypeStruct((8, 32, 4, 16), "float32", sharding=on_chips)
    kv = jax.ShapeDtypeStruct((8, 32, 2, 16), "float32", sharding=on_chips)
    mask = attention.AttentionMask(jax.numpy.ones((8, 32), bool), jax.numpy.arange(32))

    def attend(q, k, v):
        return attention.attend(q, k, v, mask)

    jax.make_jaxpr(lambda *a: attend(*a))(q, kv, kv)  # traced for this host: rowwise, so the spy works
    assert rowwise_calls == [1] and aot.platform_of((q, kv)) == "tpu"
    report = aot.compile_program(aot.ProgramSpec("attention", jax.jit(attend), (q, kv, kv)), topology.chip,
                                 len(devices))
    assert report.fits and rowwise_calls == [1]  # neither the FLOP count nor the lowering took rowwise


def test_a_llama_compiles_for_a_tpu(tmp_path, capsys):
    """The bundled tiny shape as a Llama with every optional piece (q/k/v/o and MLP biases,
    llama3 RoPE scaling): its score train step compiles for v5e and fits."""
    tiny = json.loads((cfglib.CONFIG_DIR.parent.parent / "prorank_jax/data/bundled/tiny_model.json").read_text())
    llama = dict(tiny, model_type="llama", architectures=["LlamaForCausalLM"], attention_bias=True, mlp_bias=True,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    (tmp_path / "config.json").write_text(json.dumps(llama))
    code = cli.main(["train-score", "--config", "score_tiny", "--compile-for", "v5e:2x4", "model.path=null",
                     f"model.config={tmp_path}", "eval_data=null", f"out_dir={tmp_path / 'run'}"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "run" / "compile_report.json").read_text())
    assert report["fits"] is True and [p["name"] for p in report["programs"]] == ["score train step"]
    assert report["programs"][0]["flops"] > 0


def test_a_batch_that_does_not_split_over_the_slice_is_a_config_error(tmp_path, capsys):
    """2 groups cannot split over a v5e-8's 8 chips: said in the config's terms before compiling,
    not as the compiler's sharding error."""
    code = cli.main(["train-score", "--config", "score_tiny", "--compile-for", "v5e:2x4", "model.path=null",
                     "data.batch_size=2", "eval_data=null", f"out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "data.batch_size=2 (x 1 processes) must be a multiple of the mesh's batch split, 8" in err


def test_a_tensor_axis_across_the_slices_hosts_is_a_config_error(tmp_path, capsys):
    """v4:2x2x2 is two hosts of 4 chips: mesh.tensor=8 spans both, which a run refuses (each
    host feeds its own rows); --compile-for says so before compiling."""
    code = cli.main(["train-score", "--config", "score_tiny", "--compile-for", "v4:2x2x2", "model.path=null",
                     "data.batch_size=8", "mesh.data=1", "mesh.tensor=8", "eval_data=null",
                     f"out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "mesh.tensor=8 spans processes (processes 0 and 1 share one group)" in err
    assert "within one process's 4 device(s)" in err
