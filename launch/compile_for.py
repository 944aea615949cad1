"""`--compile-for TOPOLOGY`: compile every program a run executes for a TPU, on this machine.

    prorank train-grpo  --config grpo_qwen25_05b  --compile-for v5e-8 [key=value ...]
    prorank train-score --config score_qwen25_05b --compile-for v4-8
    prorank evaluate --model FOLDER --data BEIR_DIR --compile-for v5p-8

The config resolves exactly as the real run resolves it, the model config from its
config.json alone (no weights), and the run's mesh is built over the topology's devices.
The programs, with the run's shapes (the largest data bucket) and shardings:
  stage 1: the sampler (prefill + while_loop decode with its cache), the reference (and,
           with updates_per_rollout > 1, the policy) log-probs, the GRPO train step;
  stage 2: the train step and, with eval_data, the validation scoring;
  evaluate: the Reranker's whole-prompt scoring program at its batch size and largest
           length bucket (the stated subset: the shared-prefix path's prefill / extend
           programs and smaller buckets are not compiled).
Not compiled: greedy held-out evaluation of stage 1 and the host-side data pipeline.
Per program and per chip the report gives memory against the chip's HBM, loop-corrected
FLOPs, a roofline step time and compile time (prorank_jax.aot); it is printed and written
to OUT/compile_report.json. A program that does not fit exits with status 3.

A model.path that does not exist yet (a checkpoint not downloaded) can be replaced by its
config.json alone: model.path=null model.config=launch/configs/models/qwen2.5-0.5b-instruct
(hand-written from the published Qwen2.5 hyperparameters; 1.5B beside it).
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from prorank_jax import aot
from prorank_jax import sharding as shd

EXIT_DOES_NOT_FIT = 3


@dataclasses.dataclass
class Setup:
    """What every training stage's programs share: config, tokenizer, mesh, train state structs."""

    topology: aot.Topology
    devices: list
    processes: int
    mesh: Any
    config: Any
    tokenizer: Any
    tx: Any
    state: Any  # TrainState of sharded ShapeDtypeStructs
    state_sharding: Any
    notes: list


def setup_for(topology_name: str, sections: dict, updates_per_step: int = 1) -> Setup:
    from launch.dry_run import abstract_params, model_config_of
    from prorank_jax import training
    from prorank_jax.pretrained import load_tokenizer, tokenizer_dir_of

    topology = aot.resolve_topology(topology_name)
    devices = aot.topology_devices(topology)
    source = sections["model"]
    config, cfg_file = model_config_of(source)
    m = sections["mesh"]
    mesh = shd.make_mesh(m.data, m.fsdp, m.tensor, devices=devices)
    # The batch must split over the slice's chips as a run's must over its devices; the
    # same check, before the compiler meets it as a sharding error.
    from launch.stage_runner import check_batch_divides

    check_batch_divides(sections["data"].batch_size, mesh, f"--compile-for {topology_name}", aot.process_count(devices))
    tx = training.make_optimizer(sections["optimizer"], sections["loop"].steps * updates_per_step)
    shapes = jax.eval_shape(lambda p: training.init_train_state(p, tx), abstract_params(config, source.init_seed))
    state_sharding = training.state_shardings(shapes, tx, mesh)
    tokenizer_dir = tokenizer_dir_of(source)
    notes = [f"model config {cfg_file}; tokenizer {tokenizer_dir} (its template length sets the prompt buckets)"]
    return Setup(topology, devices, aot.process_count(devices), mesh, config, load_tokenizer(tokenizer_dir, config),
                 tx, aot.structs_like(shapes, state_sharding), state_sharding, notes)


def _largest_bucket(tokenizer, config, data) -> tuple[Any, int]:
    from prorank_jax.data.pipeline import _buckets_for
    from prorank_jax.prompts import RerankPrompt

    prompt = RerankPrompt(tokenizer, data.max_length, config.max_position_embeddings)
    return prompt, _buckets_for(prompt, data)[-1]


def _batch_structs(arrays: dict, mesh) -> dict:
    return {k: aot.struct(s, d, shd.batch_sharding(mesh, len(s))) for k, (s, d) in arrays.items()}


def _train_step_spec(name: str, loss_fn, s: Setup, batch: dict, resident: int = 0, note: str = "") -> aot.ProgramSpec:
    from prorank_jax import training

    step = training.make_train_step(loss_fn, s.tx, mesh=s.mesh, state_sharding=s.state_sharding, batch_example=batch)
    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in batch.items())
    return aot.ProgramSpec(name, step, (s.state, batch), resident_bytes=resident, resident_note=note, shapes=shapes)


def _validation_spec(name: str, s: Setup, rows: int, max_length: int, mesh, param_shardings,
                     resident: int = 0, note: str = "", dtype: str | None = None) -> aot.ProgramSpec:
    """The Reranker's whole-prompt scorer as it runs on a TPU (no token packing): weights in
    the compute dtype with `param_shardings` on `mesh`, the batch split on its rows over the
    mesh's batch axes when they divide it, else replicated (sharding.place_rows)."""
    from launch.dry_run import abstract_params
    from prorank_jax.dtypes import dtype_of
    from prorank_jax.prompts import RerankPrompt
    from scoring.batching import length_buckets
    from scoring.reranker import default_dtype, jitted_scorer

    dtype = dtype or default_dtype("tpu")
    config = s.config.replace(dtype=dtype, param_dtype=dtype)
    prompt = RerankPrompt(s.tokenizer, max_length, config.max_position_embeddings)
    length = length_buckets(prompt.max_total_length)[-1]
    shapes = abstract_params(config)
    shardings = param_shardings(shapes) if callable(param_shardings) else param_shardings
    params = aot.structs_like(jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype_of(dtype)), shapes),
                              shardings)
    split = rows % shd.batch_divisor(mesh) == 0
    ids = aot.struct((rows, length), jnp.int32, shd.batch_sharding(mesh, 2) if split else shd.replicated(mesh))
    scorer = jitted_scorer(config, prompt.yes_id, prompt.no_id)
    how = f"split over {shd.batch_divisor(mesh)} chips" if split else "replicated on every chip"
    return aot.ProgramSpec(name, scorer, (params, ids, ids), resident_bytes=resident, resident_note=note,
                           chips=mesh.size if split else 1,
                           shapes=f"{rows} prompts x {length} tokens ({how}), {dtype} weights",
                           what_to_change="a smaller batch size (eval_data.batch_size / --batch-size) or max_length")


# ----------------------------------------------------------------------------- stage 1
def grpo_programs(s: Setup, sections: dict) -> list[aot.ProgramSpec]:
    from prorank_jax import sampling
    from rl.rollout import _logprobs_jit, sampling_config
    from rl.train import grpo_loss

    grpo, data = sections["grpo"], sections["data"]
    _, length = _largest_bucket(s.tokenizer, s.config, data)
    prompts = data.batch_size * s.processes  # data.batch_size is per process
    rows, t = prompts * grpo.group_size, grpo.max_completion_tokens
    params_bytes = aot.per_chip_bytes(s.state.params)
    state_bytes = aot.per_chip_bytes(s.state)
    ref_bytes = params_bytes if grpo.beta > 0 else 0  # the frozen reference: same shardings as the params
    sampler = sampling_config(grpo, s.tokenizer, s.config)
    # The rollout prefills the pipeline's bucket as it is (sample(bucketed=True)): no second padding.
    rows_of = lambda shape, dtype: aot.struct(shape, dtype, shd.batch_sharding(s.mesh, len(shape)))  # noqa: E731
    key = jax.eval_shape(lambda: jax.random.key(0))
    specs = [aot.ProgramSpec(
        "sampler", sampling._generate_jit,
        (s.state.params, rows_of((prompts, length), jnp.int32), rows_of((prompts, length), jnp.int32),
         rows_of((prompts,), jnp.int32), key),
        kwargs=dict(config=s.config, sampling=sampler, num_samples=grpo.group_size),
        resident_bytes=state_bytes - params_bytes + ref_bytes, resident_note="optimizer state + reference params",
        while_trips=t - 1,
        shapes=f"{prompts} prompts x {length} tokens, {grpo.group_size} samples each, {t} new tokens",
    )]
    # Global arrays split on their rows, as rl.rollout passes them (never host-local NumPy).
    host = (rows_of((prompts, length), jnp.int32), rows_of((prompts, length), jnp.int32),
            rows_of((rows, t), jnp.int32), rows_of((rows, t), jnp.int32))
    logprob_shapes = f"{prompts} prompts x {length} tokens + {rows} completions x {t} tokens"
    if grpo.beta > 0:
        specs.append(aot.ProgramSpec("reference log-probs", _logprobs_jit, (s.state.params, *host),
                                     kwargs=dict(config=s.config, temperature=grpo.temperature),
                                     resident_bytes=state_bytes, resident_note="train state", shapes=logprob_shapes))
    if grpo.updates_per_rollout > 1:
        specs.append(aot.ProgramSpec("policy log-probs", _logprobs_jit, (s.state.params, *host),
                                     kwargs=dict(config=s.config, temperature=grpo.temperature),
                                     resident_bytes=state_bytes - params_bytes + ref_bytes,
                                     resident_note="optimizer state + reference params", shapes=logprob_shapes))
    arrays = {"prompt_ids": ((prompts, length), jnp.int32), "prompt_mask": ((prompts, length), jnp.int32),
              "completion_ids": ((rows, t), jnp.int32), "completion_mask": ((rows, t), jnp.int32),
              "advantages": ((rows,), jnp.float32)}
    if grpo.beta > 0:
        arrays["ref_logp"] = ((rows, t), jnp.float32)
    if grpo.updates_per_rollout > 1:
        arrays["old_logp"] = ((rows, t), jnp.float32)
    loss = functools.partial(grpo_loss, config=s.config, grpo=grpo)
    specs.append(_train_step_spec("GRPO train step", loss, s, _batch_structs(arrays, s.mesh),
                                  resident=ref_bytes, note="reference params" if ref_bytes else ""))
    return specs


# ----------------------------------------------------------------------------- stage 2
def score_programs(s: Setup, sections: dict) -> list[aot.ProgramSpec]:
    from scoring.train import score_loss

    data = sections["data"]
    prompt, length = _largest_bucket(s.tokenizer, s.config, data)
    groups, slots = data.batch_size * s.processes, 1 + data.num_negatives
    arrays = {"input_ids": ((groups, slots, length), jnp.int32), "attention_mask": ((groups, slots, length), jnp.int32),
              "labels": ((groups, slots), jnp.int32), "doc_mask": ((groups, slots), jnp.int32),
              "example_mask": ((groups,), jnp.int32)}
    loss = functools.partial(score_loss, config=s.config, loss_config=sections["loss"], yes_id=prompt.yes_id,
                             no_id=prompt.no_id)
    specs = [_train_step_spec("score train step", loss, s, _batch_structs(arrays, s.mesh))]
    eval_cfg = sections["eval_data"]
    if eval_cfg is not None:
        # scoring.train.ScoreStage.validate: batch_size * (1 + num_negatives) pairs per call on
        # the training mesh, the params cast to the compute dtype with their train shardings,
        # while the train state stays on the chips.
        specs.append(_validation_spec("validation scoring", s, eval_cfg.batch_size * (1 + eval_cfg.num_negatives),
                                      eval_cfg.max_length, s.mesh, s.state_sharding.params,
                                      resident=aot.per_chip_bytes(s.state), note="train state",
                                      dtype=s.config.dtype))
    return specs


# ----------------------------------------------------------------------------- entry points
def compile_run(kind: str, raw: dict, topology_name: str, dry_run: bool = False) -> int:
    """`prorank train-grpo|train-score --compile-for T`: print and write the report; the exit status."""
    from launch import config as cfglib
    from launch.runner import build_sections
    from rl.config import GRPOConfig
    from scoring.losses import ScoreLossConfig

    stage = {"grpo": dict(grpo=GRPOConfig), "score": dict(loss=ScoreLossConfig)}[kind]
    sections, resolved = build_sections(raw, **stage)
    cfglib.print_resolved(resolved)
    updates = sections["grpo"].updates_per_rollout if kind == "grpo" else 1
    try:
        setup = setup_for(topology_name, sections, updates)
        specs = grpo_programs(setup, sections) if kind == "grpo" else score_programs(setup, sections)
        report = aot.compile_programs(setup.topology, setup.devices, dict(setup.mesh.shape), specs, setup.notes,
                                      log=lambda m: print(f"[prorank] {m}", flush=True))
    except (aot.TopologyError, ValueError, FileNotFoundError) as err:
        print(f"prorank: error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    out_dir = Path(raw.get("out_dir") or f"runs/{kind}")
    print(f"wrote {report.write(out_dir / 'compile_report.json')}")
    if dry_run:
        _compare_dry_run(sections, setup, report)
    return _exit_status(report)


def compile_evaluate(args, topology_name: str) -> int:
    """`prorank evaluate --compile-for T`: the Reranker's scoring program on one chip."""
    from launch.dry_run import model_config_of
    from prorank_jax.pretrained import ModelSource, load_tokenizer, tokenizer_dir_of
    from scoring.reranker import DEFAULT_BATCH_SIZE

    try:
        topology = aot.resolve_topology(topology_name)
        devices = aot.topology_devices(topology)
        models = args.model if isinstance(args.model, list) else [args.model]
        if len(models) != 1:
            raise ValueError(f"--compile-for compiles one model's programs; got --model {models}")
        source = ModelSource(path=models[0])
        config, cfg_file = model_config_of(source)
        tokenizer_dir = tokenizer_dir_of(source)
        setup = Setup(topology, devices, aot.process_count(devices), None, config,
                      load_tokenizer(tokenizer_dir, config), None, None, None,
                      [f"model config {cfg_file}; tokenizer {tokenizer_dir}",
                       "evaluate scores on one host's chips (the Reranker's mesh: params replicated, "
                       "batches split on their rows); compiled: whole prompts at the largest length bucket"])
        host_chips = [d for d in devices if d.process_index == devices[0].process_index]
        mesh = shd.make_mesh(data=-1, devices=host_chips)
        spec = _validation_spec("rerank scoring", setup, args.batch_size or DEFAULT_BATCH_SIZE, args.max_length,
                                mesh, lambda shapes: shd.param_shardings(shapes, mesh))
        report = aot.compile_programs(topology, devices, {"data": len(host_chips)}, [spec], setup.notes,
                                      log=lambda m: print(f"[prorank] {m}", flush=True))
    except (aot.TopologyError, ValueError, FileNotFoundError) as err:
        print(f"prorank evaluate: error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    if args.out:
        print(f"wrote {report.write(Path(args.out) / 'compile_report.json')}")
    return _exit_status(report)


def _exit_status(report: aot.CompileReport) -> int:
    try:
        report.check_fits()
    except aot.DoesNotFitError as err:
        print(f"prorank: error: {err}", file=sys.stderr)
        return EXIT_DOES_NOT_FIT
    return 0


def _compare_dry_run(sections: dict, s: Setup, report: aot.CompileReport) -> None:
    """--dry-run with --compile-for: the arithmetic plan over the topology's devices beside
    the compiler's number for the train step."""
    from launch.dry_run import human, print_dry_run

    plan = print_dry_run(sections["model"], sections["mesh"], sections["optimizer"], sections["loop"],
                         devices=s.devices)
    step = next(p for p in report.programs if "train step" in p.name)
    compiled = step.total_bytes - step.resident_bytes
    ratio = plan.total_bytes / compiled if compiled else float("nan")
    print(f"dry-run estimate (params + gradients + optimizer, activations not included): {human(plan.total_bytes)} "
          f"per chip; the compiler's {step.name}: {human(compiled)} per chip (arguments + outputs - aliased + "
          f"temporaries); the estimate is {100 * ratio:.0f}% of the compiler's number")
