"""Set-up pieces of the training commands (launch/stage_runner.py runs the body).

The config sections both stages share and the run's prompt family (build_sections, also
used by --compile-for), multi-host JAX initialisation from the launch scripts' variables,
and start_run: load the model, shard params and optimizer state by the rule table on the
mesh, and resume from the latest complete checkpoint of the output folder when there is one.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from prorank_jax import paths, training
from prorank_jax.config import ModelConfig
from prorank_jax.multihost import agreed, written_by_process_zero
from prorank_jax.pretrained import ModelSource, load_model, model_folder_kind, source_folder


def build_sections(raw: dict, **stage: type) -> tuple[dict, dict]:
    """The config sections both training commands share (model, data, eval_data, optimizer,
    loop, mesh) plus the stage's own (e.g. grpo=GRPOConfig), and the resolved config."""
    from launch import config as cfglib
    from prorank_jax.data.pipeline import DataConfig
    from prorank_jax.prompts import prompt_family

    sections = dict(
        model=cfglib.section(raw, "model", ModelSource),
        data=cfglib.section(raw, "data", DataConfig),
        eval_data=cfglib.section(raw, "eval_data", DataConfig) if raw.get("eval_data") else None,
        **{name: cfglib.section(raw, name, cls) for name, cls in stage.items()},
        optimizer=cfglib.section(raw, "optimizer", training.OptimizerConfig),
        loop=cfglib.section(raw, "loop", training.LoopConfig),
        mesh=cfglib.section(raw, "mesh", training.MeshConfig),
    )
    family = run_prompt_family(raw, sections["model"])
    if "grpo" in sections:
        sections["grpo"] = family_answers(sections["grpo"], prompt_family(family), raw)
    return sections, dict(cfglib.resolved(raw, **sections), prompt_family=family)


def stage_sections(raw: dict, dry_run: bool, show_config: bool = False, **stage: type) -> tuple[dict, dict] | None:
    """build_sections, the resolved config printed (with --show-config or --dry-run), and
    --dry-run handled (returns None then)."""
    from launch import config as cfglib

    sections, resolved = build_sections(raw, **stage)
    if show_config or dry_run:
        cfglib.print_resolved(resolved)
    if dry_run:
        from launch.dry_run import print_dry_run

        print_dry_run(sections["model"], sections["mesh"], sections["optimizer"], sections["loop"])
        return None
    return sections, resolved


def run_prompt_family(raw: dict, model_source: ModelSource) -> str:
    """The run's prompt family, from one place: the config's top-level `prompt_family` when set,
    else the family of the folder model.path names (prompts.detect_prompt_family: its saved
    field, else a Qwen3-Reranker name), else mxbai-v2. It is saved in run_config.json."""
    from launch import config as cfglib
    from prorank_jax.pretrained import BUNDLED_WARM_START
    from prorank_jax.prompts import DEFAULT_PROMPT_FAMILY, detect_prompt_family, prompt_family

    source = raw.get("_source", "config")
    forced = raw.get("prompt_family")
    path = model_source.path
    try:
        if forced is not None:
            return prompt_family(forced).name
        if path and path != BUNDLED_WARM_START and paths.as_path(path).is_dir():
            return detect_prompt_family(path)
        return DEFAULT_PROMPT_FAMILY
    except ValueError as err:
        raise cfglib.RunConfigError(f"{source}: {err}") from None


def family_answers(grpo, family, raw: dict):
    """GRPOConfig with allowed_labels = the prompt family's (no, yes) answers, which stage 1's
    rewards accept and its labels are written in; a config that sets other ones is an error."""
    given = (raw.get("grpo") or {}).get("allowed_labels")
    if given is not None and tuple(given) != family.answer_texts:
        from launch.config import RunConfigError

        raise RunConfigError(
            f"{raw.get('_source', 'config')}: grpo.allowed_labels={list(given)} disagrees with prompt_family "
            f"{family.name!r}, whose answers are {list(family.answer_texts)} (not relevant, relevant); "
            "leave allowed_labels out to take the family's"
        )
    return grpo.replace(allowed_labels=family.answer_texts)


def _int_env(name: str, low: int, high: int | None = None) -> int:
    """An integer environment variable in [low, high); a ValueError naming it otherwise."""
    expected = f"an integer >= {low}" if high is None else f"an integer in {low}..{high - 1}"
    text = os.environ.get(name)
    if text is None or not text.strip():
        raise ValueError(f"{name} is not set; with PRORANK_COORDINATOR set it must be {expected}")
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected {expected}") from None
    if value < low or (high is not None and value >= high):
        raise ValueError(f"{name}={value}: expected {expected}")
    return value


# Environment variable -> jax.distributed.initialize argument; JAX's defaults (300 s to
# start, 100 s without a heartbeat, 300 s at shutdown) hold unless one is set.
DISTRIBUTED_TIMEOUTS = {
    "PRORANK_INIT_TIMEOUT_S": "initialization_timeout",
    "PRORANK_HEARTBEAT_TIMEOUT_S": "heartbeat_timeout_seconds",
    "PRORANK_SHUTDOWN_TIMEOUT_S": "shutdown_timeout_seconds",
}


def distributed_timeouts() -> dict[str, int]:
    """The timeouts the environment sets (whole seconds >= 1), as initialize's arguments."""
    return {arg: _int_env(name, 1) for name, arg in DISTRIBUTED_TIMEOUTS.items() if os.environ.get(name, "").strip()}


def maybe_initialize_distributed() -> None:
    """jax.distributed.initialize() when the launcher says this is one of several processes.

    Set by launch/multi_gpu.sh and launch/tpu_pod.sh: PRORANK_COORDINATOR (host:port),
    PRORANK_NUM_PROCESSES, PRORANK_PROCESS_ID. On Cloud TPU pods JAX discovers all of it
    itself, signalled by PRORANK_DISTRIBUTED=auto. Must run before any other JAX call.
    Set by hand, a wrong value would start a job that hangs waiting for hosts that never
    come, so every value is checked first and a bad one is named; then the processes answer
    a roll call on the coordinator's port (launch/rollcall.py: a busy port, an id given to two
    processes or one that never came is named on every process that can hear of it) before
    JAX's start-up. PRORANK_INIT_TIMEOUT_S bounds the roll call and JAX's start-up each;
    it, _HEARTBEAT_TIMEOUT_S and _SHUTDOWN_TIMEOUT_S bound JAX's waits (DISTRIBUTED_TIMEOUTS).
    """
    from launch import rollcall

    mode = os.environ.get("PRORANK_DISTRIBUTED", "").strip()
    timeouts = distributed_timeouts()
    if mode == "auto":
        jax.distributed.initialize(**timeouts)
    elif mode:
        raise ValueError(f"PRORANK_DISTRIBUTED={mode!r}: expected 'auto' or unset")
    elif os.environ.get("PRORANK_COORDINATOR", "").strip():
        address = os.environ["PRORANK_COORDINATOR"].strip()
        num_processes = _int_env("PRORANK_NUM_PROCESSES", 1)
        process_id = _int_env("PRORANK_PROCESS_ID", 0, num_processes)
        # JAX ends the process on a timeout with a bare DEADLINE_EXCEEDED; this line says what it waited for.
        wait = timeouts.get("initialization_timeout", 300)
        print(f"[prorank] process {process_id} of {num_processes}: joining the coordinator at {address}; "
              f"waiting up to {wait} s for all {num_processes} processes (PRORANK_INIT_TIMEOUT_S)", flush=True)
        rollcall.roll_call(address, num_processes, process_id, wait)
        jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                                   process_id=process_id, **timeouts)


def place_params(params, shardings):
    """Loaded params onto their shardings. On several processes each one copies only its own
    shards from its host copy (every process loads the same model): a model restored onto one
    local device (a run folder's checkpoint) cannot be device_put to devices of other processes."""
    if jax.process_count() == 1:
        return jax.device_put(params, shardings)

    def place(x, sharding):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree_util.tree_map(place, params, shardings)


@dataclasses.dataclass
class Run:
    out_dir: Path
    config: ModelConfig
    tokenizer_dir: Path
    mesh: Any
    optimizer: Any
    state: training.TrainState
    state_sharding: training.TrainState
    checkpointer: Any
    initial_params: Any  # the params the run started from (GRPO's frozen reference)
    data_state: dict | None  # restored data-iterator state, None on a fresh start
    resumed_from: int | None  # the loop step of the checkpoint resumed from
    base_rng: jax.Array


def start_run(*, out_dir: str | os.PathLike, model_source: ModelSource, optimizer: training.OptimizerConfig,
              loop: training.LoopConfig, device_mesh: Mesh, resolved_config: dict, updates_per_step: int = 1) -> Run:
    """Load the model onto the mesh and start the run, or resume it from its latest checkpoint.

    updates_per_step: optimizer updates per loop step (GRPO's updates per rollout), so the
    learning-rate schedule spans them all and a resumed step count is in updates."""
    from prorank_jax import checkpoint, run_folder_io

    out_dir = paths.as_path(out_dir)
    paths.check_bucket(out_dir, write=True)  # a missing or refusing bucket fails before the model loads
    out_dir.mkdir(parents=True, exist_ok=True)
    # Its folder found on every host before any loads it (a run folder's restore is a collective).
    folder = source_folder(model_source)
    agreed(lambda: folder and model_folder_kind(folder), f"find its model folder {folder}")
    config, params, tokenizer_dir = load_model(model_source)
    tx = training.make_optimizer(optimizer, loop.steps * updates_per_step)
    abstract = jax.eval_shape(lambda p: training.init_train_state(p, tx), params)
    state_sharding = training.state_shardings(abstract, tx, device_mesh)
    params = place_params(params, state_sharding.params)

    # Each saved step records the config this invocation resolved; run_config.json keeps
    # only the run's first, so a resume with other overrides is visible per step.
    checkpointer = checkpoint.Checkpointer(out_dir / "checkpoints", save_interval_steps=max(loop.save_every, 1),
                                           max_to_keep=loop.max_to_keep, async_save=loop.async_checkpointing,
                                           run_config=resolved_config)
    # Process 0 writes (and checks the model against a resumed folder's); a refusal there is
    # an error on every process instead of the others waiting in the restore's collectives.
    written_by_process_zero(
        lambda: run_folder_io.write_run_metadata(out_dir, resolved_config=resolved_config,
                                                 model_config=config.to_hf(), tokenizer_dir=tokenizer_dir),
        f"the run metadata (run_config.json, model_config.json, tokenizer/) in {out_dir}")
    base_rng = jax.random.key(loop.seed)
    # The steps every process can read, agreed before any of them restores one (a step damaged
    # on one host only would send the processes into different steps' restores).
    steps = checkpointer.agreed_steps()
    if steps:
        # Refused before any array is read, on every process alike (all read the same file).
        checkpoint.iterator_state_of_this_process(
            checkpointer.data_state(steps[-1]), checkpointer.directory / str(steps[-1]),
            jax.process_index(), jax.process_count())
    # The newest step that actually restores: one with a damaged array file is skipped
    # (with a warning) for the step before it.
    restored = checkpointer.restore_latest(steps, abstract_params=abstract.params,
                                           abstract_opt_state=abstract.opt_state,
                                           param_shardings=state_sharding.params,
                                           opt_state_shardings=state_sharding.opt_state)
    latest = None if restored is None else restored["step"]
    data_state = None
    if restored is None:
        state = jax.jit(lambda p: training.init_train_state(p, tx), out_shardings=state_sharding)(params)
    else:
        extra = restored["data_state"] or {}
        data_state = checkpoint.iterator_state_of_this_process(
            extra, checkpointer.directory / str(latest), jax.process_index(), jax.process_count())
        state = training.TrainState(
            step=jax.device_put(np.int32(restored["step"] * updates_per_step), state_sharding.step),
            params=restored["params"], opt_state=restored["opt_state"],
            skipped=jax.device_put(np.int32(extra.get("skipped_updates", 0)), state_sharding.skipped),
        )
        base_rng = restored["rng"]
        print(f"[prorank] resuming {out_dir} from step {latest}", flush=True)
    return Run(out_dir, config, Path(tokenizer_dir), device_mesh, tx, state, state_sharding, checkpointer,
               params, data_state, latest, base_rng)
