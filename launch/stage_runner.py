"""The one body of `prorank train-grpo` and `prorank train-score`.

Both stages resolve their config, check it, start or resume the run, load the tokenizer
and prompt, build the training iterator, loop, validate, save the final model and write
a summary in the same way; only the loss, the production of a step's batch and the
validation differ. So the body is written once here (run_stage) and each launcher hands
it a StageSpec: its config sections and a `build` that returns those three pieces
(StageParts).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping

from launch import config as cfglib
from launch.command_help import help_kwargs
from launch.runner import Run, maybe_initialize_distributed
from prorank_jax import paths
from prorank_jax.files import atomic_text_writer
from prorank_jax.multihost import agreed, written_by_process_zero


@dataclasses.dataclass(frozen=True)
class StageContext:
    """What the shared body has built when it asks the stage for its pieces."""

    run: Run
    sections: dict
    family: Any  # prompts.PromptFamily
    tokenizer: Any
    prompt: Any  # the family's prompt builder
    train_iter: Any  # the stage's training iterator (already restored on a resume)


@dataclasses.dataclass
class StageParts:
    """A stage's own pieces: its update (the loss under training.lazy_train_step), how a
    step's batch is produced, its validation."""

    train_step: Callable  # (state, host batch) -> (state, metrics)
    produce: Callable  # (state, rng) -> training.StepOutput
    evaluate: Callable | None = None  # state -> metrics dict


@dataclasses.dataclass(frozen=True)
class StageSpec:
    """One training stage, as the shared body needs it.

    kind: "grpo" / "score": the --compile-for program set, the default out_dir runs/<kind>
      and the progress bar's label.
    number: 1 or 2: which examples the data sources load, and the "stage N done" line.
    sections: the stage's own config sections, e.g. {"grpo": GRPOConfig}.
    make_iterator: (examples, prompt, DataConfig) -> the training iterator.
    build: StageContext -> StageParts.
    check: sections -> None, a ValueError for a config the stage cannot run (before any loading).
    updates_per_step: sections -> optimizer updates per loop step.
    """

    kind: str
    number: int
    sections: Mapping[str, type]
    headline: tuple[str, ...]
    make_iterator: Callable
    build: Callable[[StageContext], StageParts]
    check: Callable[[dict], None] = lambda sections: None
    updates_per_step: Callable[[dict], int] = lambda sections: 1


def parse_args(argv, prog: str, doc: str):
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0], **help_kwargs(prog.split()[-1]))
    parser.add_argument("--config", required=True, help="YAML file or bundled config name (e.g. grpo_tiny)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the mesh, parameter shardings and memory per device, then exit")
    parser.add_argument("--compile-for", metavar="TOPOLOGY", default=None,
                        help="compile the run's programs for a TPU topology (v5e-8, v4-8, v5e:2x4, ...) on this "
                             "machine, report memory / FLOPs per chip, then exit (needs requirements-tpu-aot.txt)")
    parser.add_argument("--show-config", action="store_true",
                        help="print the resolved config (every field, defaults included) before training; "
                             "it is always saved as OUT/run_config.json")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. loop.steps=50")
    return parser.parse_args(argv)


def main(argv: list[str], stage: StageSpec, prog: str, doc: str) -> int:
    """A training command's entry point (`prog` names it in --help)."""
    args = parse_args(argv, prog, doc)
    if args.compile_for:
        # Compiling for a topology needs no other process: the TPU devices are descriptions.
        from launch.compile_for import compile_run

        return compile_run(stage.kind, cfglib.load_config(args.config, args.overrides), args.compile_for,
                           dry_run=args.dry_run)
    # First thing, before the config is read, so every process fails or starts together.
    maybe_initialize_distributed()
    raw = agreed(lambda: cfglib.load_config(args.config, args.overrides), "read its config")
    if not (args.show_config or args.dry_run):
        print(config_line(args.config, args.overrides, stage_out_dir(raw, stage)), flush=True)
    run_stage(raw, stage, dry_run=args.dry_run, show_config=args.show_config)
    return 0


def config_line(config: str, overrides, out_dir: Path) -> str:
    """What a training command says about its config instead of printing all of it."""
    given = f" with {' '.join(overrides)}" if overrides else ""
    return f"[prorank] config {config}{given}; resolved in {out_dir / 'run_config.json'} (--show-config prints it)"


def stage_out_dir(raw: dict, stage: StageSpec) -> Path:
    return paths.as_path(raw.get("out_dir") or f"runs/{stage.kind}")


def run_stage(raw: dict, stage: StageSpec, dry_run: bool = False, show_config: bool = False) -> dict:
    """Train one stage from a raw config (as load_config returns it); the summary it wrote
    ({} for --dry-run). show_config: print the resolved config first (--dry-run always does)."""
    from launch.runner import start_run
    from prorank_jax import training

    # Each fallible local step is agreed by every process (multihost.agreed): a config or data
    # file missing on one host is an error on all of them, not a wait in the next collective.
    checked = agreed(lambda: _checked_config(raw, stage, dry_run, show_config), "check its config")
    if checked is None:
        return {}
    sections, resolved, device_mesh = checked
    out_dir = stage_out_dir(raw, stage)
    data = sections["data"]
    run = start_run(out_dir=out_dir, model_source=sections["model"], optimizer=sections["optimizer"],
                    loop=sections["loop"], device_mesh=device_mesh, resolved_config=resolved,
                    updates_per_step=stage.updates_per_step(sections))
    tokenizer, family, prompt, train_iter = agreed(lambda: _training_data(run, resolved, data, stage),
                                                   "load its tokenizer and training data")
    restore_iterator(train_iter, run.data_state, out_dir)
    parts = stage.build(StageContext(run, sections, family, tokenizer, prompt, train_iter))

    final = training.run_loop(
        state=run.state, start_step=run.resumed_from or 0, train_step=parts.train_step, produce=parts.produce,
        loop=sections["loop"], out_dir=out_dir, base_rng=run.base_rng, checkpointer=run.checkpointer,
        data_state=train_iter.get_state, evaluate=parts.evaluate, headline=stage.headline, desc=stage.kind,
        updates_per_step=stage.updates_per_step(sections),
    )
    run.checkpointer.close()
    summary = {"out_dir": str(out_dir), "steps": sections["loop"].steps}
    if final.completed:
        summary["hf_folder"] = str(save_final_model(out_dir, final.state.params, run.config, run.tokenizer_dir,
                                                    prompt_family=family.name))
        if parts.evaluate is not None:
            summary["eval"] = parts.evaluate(final.state)
        written_by_process_zero(lambda: write_summary(out_dir, summary), str(out_dir / "summary.json"))
        print(f"[prorank] stage {stage.number} done: {json.dumps(summary)}", flush=True)
    return summary


def _checked_config(raw: dict, stage: StageSpec, dry_run: bool, show_config: bool):
    """(sections, resolved config, device mesh) of a raw config, checked before anything is
    loaded; None for --dry-run (done then)."""
    from launch.runner import stage_sections

    prepared = stage_sections(raw, dry_run, show_config, **stage.sections)
    if prepared is None:
        return None
    sections, resolved = prepared
    source = raw.get("_source", "config")
    try:
        stage.check(sections)
    except ValueError as err:
        raise cfglib.RunConfigError(f"{source}: {err}") from None
    device_mesh = sections["mesh"].build()
    check_batch_divides(sections["data"].batch_size, device_mesh, source)
    return sections, resolved, device_mesh


def _training_data(run: Run, resolved: dict, data, stage: StageSpec):
    """(tokenizer, prompt family, prompt, training iterator) of a started run."""
    from prorank_jax.data.pipeline import load_config_examples
    from prorank_jax.pretrained import load_tokenizer

    tokenizer = load_tokenizer(run.tokenizer_dir, run.config)
    family = _prompt_family(resolved["prompt_family"])
    prompt = family.prompt(tokenizer, data.max_length, run.config.max_position_embeddings)
    train_iter = stage.make_iterator(load_config_examples(data, stage=stage.number), prompt, repeat_forever(data))
    return tokenizer, family, prompt, train_iter


def check_batch_divides(batch_size: int, device_mesh, source: str, processes: int | None = None) -> None:
    """Every process's data.batch_size rows together must split evenly over the mesh's batch
    axes (sharding.batch_divisor), and no axis the batch is replicated over (mesh.tensor) may
    span processes, since each process feeds its own rows (sharding.check_rows_within_processes);
    said before anything is loaded or compiled, in the config's terms.
    processes: how many run the job (default this job's; --compile-for passes the slice's)."""
    import jax

    from prorank_jax import sharding as shd

    try:
        shd.check_rows_within_processes(device_mesh)
    except ValueError as err:
        raise cfglib.RunConfigError(f"{source}: {err}") from None
    divisor = shd.batch_divisor(device_mesh)
    processes = jax.process_count() if processes is None else processes
    if (batch_size * processes) % divisor:
        raise cfglib.RunConfigError(
            f"{source}: data.batch_size={batch_size} (x {processes} processes) must be a multiple "
            f"of the mesh's batch split, {divisor} (mesh {dict(device_mesh.shape)})"
        )


def restore_iterator(train_iter, saved: dict | None, out_dir: Path) -> None:
    """Continue the training iterator from this process's saved state, with the outcome agreed
    by every process: one that cannot (its data changed) would otherwise leave the others
    waiting in the first step's collective until JAX's shutdown timeout."""
    import jax

    from prorank_jax.multihost import any_process

    problem = None
    if saved:
        try:
            train_iter.set_state(saved)
        except (ValueError, KeyError, TypeError) as err:  # a changed or malformed saved state
            problem = f"{type(err).__name__}: {err}"
    if any_process(problem is not None):
        why = problem or "another process could not restore its data iterator state"
        raise cfglib.RunConfigError(
            f"{out_dir}: cannot resume the training data on process {jax.process_index()}: {why}; resume with the "
            "data section the run was started with, or start a new run in another out_dir")


def repeat_forever(data):
    """Training length is loop.steps; the training data repeats as often as that needs."""
    return dataclasses.replace(data, num_epochs=None)


def write_summary(out_dir: Path, summary: dict) -> None:
    with atomic_text_writer(out_dir / "summary.json") as f:
        f.write(json.dumps(summary, indent=2) + "\n")


def save_final_model(out_dir: str | Path, params, config, tokenizer_dir, prompt_family: str | None = None) -> Path:
    """The final model as an HF folder in the run folder (what stage 2 and export start from),
    with its prompt family in prorank.json (prompts.detect_prompt_family reads it back).

    Every process must call it: params split over processes are gathered to each host
    (multihost.host_copy), then process 0 alone writes the folder and the others wait for it."""
    from prorank_jax import hf
    from prorank_jax.multihost import host_copy
    from prorank_jax.prompts import PRORANK_FILE, prorank_file_text
    from prorank_jax.run_folder import FINAL_HF_DIR

    extra = {PRORANK_FILE: prorank_file_text(prompt_family)} if prompt_family is not None else None
    folder = paths.as_path(out_dir) / FINAL_HF_DIR
    whole = host_copy(params)
    written_by_process_zero(
        lambda: hf.save(whole, config, folder, tokenizer_dir=tokenizer_dir, extra_files=extra), str(folder))
    return folder


def _prompt_family(name: str):
    from prorank_jax.prompts import prompt_family

    return prompt_family(name)
