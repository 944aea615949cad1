"""`prorank train-grpo --config FILE [key=value ...]`: stage 1, GRPO prompt warmup.

Sections of the YAML config: model (ModelSource), data and eval_data (DataConfig),
grpo (GRPOConfig), optimizer, loop, mesh, and out_dir. Re-running with the same
out_dir resumes from its latest complete checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

from launch import config as cfglib
from launch.runner import maybe_initialize_distributed


def parse_args(argv, prog: str, doc: str):
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML file or bundled config name (e.g. grpo_tiny)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the mesh, parameter shardings and memory per device, then exit")
    parser.add_argument("--compile-for", metavar="TOPOLOGY", default=None,
                        help="compile the run's programs for a TPU topology (v5e-8, v4-8, v5e:2x4, ...) on this "
                             "machine, report memory / FLOPs per chip, then exit (needs requirements-tpu-aot.txt)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. loop.steps=50")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv, "prorank train-grpo", __doc__)
    if args.compile_for:
        # Compiling for a topology needs no other process: the TPU devices are descriptions.
        from launch.compile_for import compile_run

        return compile_run("grpo", cfglib.load_config(args.config, args.overrides), args.compile_for,
                           dry_run=args.dry_run)
    # First thing, before the config is read, so every process fails or starts together.
    maybe_initialize_distributed()
    raw = cfglib.load_config(args.config, args.overrides)
    run_grpo(raw, dry_run=args.dry_run)
    return 0


def run_grpo(raw: dict, dry_run: bool = False) -> dict:
    from launch.runner import lazy_train_step, stage_sections, start_run
    from prorank_jax import training
    from prorank_jax.data.pipeline import DataConfig, load_config_examples, make_stage1_iterator
    from prorank_jax.pretrained import generation_eos_token_ids, load_tokenizer
    from prorank_jax.prompts import prompt_family
    from rl.config import GRPOConfig
    from rl.rollout import sampling_config
    from rl.train import GRPOStage, greedy_accuracy, grpo_loss, save_final

    prepared = stage_sections(raw, dry_run, grpo=GRPOConfig)
    if prepared is None:
        return {}
    sections, resolved = prepared
    family = prompt_family(resolved["prompt_family"])
    out_dir = Path(raw.get("out_dir") or "runs/grpo")
    run = start_run(out_dir=out_dir, model_source=sections["model"], optimizer=sections["optimizer"],
                    loop=sections["loop"], mesh=sections["mesh"], resolved_config=resolved,
                    updates_per_step=sections["grpo"].updates_per_rollout)
    tokenizer = load_tokenizer(run.tokenizer_dir, run.config)
    data: DataConfig = sections["data"]
    prompt = family.prompt(tokenizer, data.max_length, run.config.max_position_embeddings)
    train_iter = make_stage1_iterator(load_config_examples(data, stage=1), prompt, repeat_forever(data))
    if run.data_state:
        train_iter.set_state(run.data_state)
    grpo: GRPOConfig = sections["grpo"]
    # Every EOS id of the tokenizer, config.json and generation_config.json ends a completion.
    sampler = sampling_config(grpo, tokenizer, run.config, generation_eos_token_ids(sections["model"]))
    stage = GRPOStage(run.config, grpo, tokenizer, ref_params=run.initial_params, prompts=train_iter,
                      sampler=sampler)

    evaluate = None
    eval_cfg = sections["eval_data"]
    if eval_cfg is not None:
        eval_examples = load_config_examples(eval_cfg, stage=1)

        def evaluate(state):
            batches = make_stage1_iterator(eval_examples, prompt, eval_cfg, training=False)
            return greedy_accuracy(state.params, run.config, batches, tokenizer, stage.sampler,
                                   label_ids=(prompt.yes_id, prompt.no_id), answers=grpo.allowed_labels)

    step = lazy_train_step(functools.partial(grpo_loss, config=run.config, grpo=grpo), run,
                           updates_per_batch=grpo.updates_per_rollout)
    final = training.run_loop(
        state=run.state, start_step=run.resumed_from or 0, train_step=step, produce=stage.produce,
        loop=sections["loop"], out_dir=out_dir, base_rng=run.base_rng, checkpointer=run.checkpointer,
        data_state=train_iter.get_state, evaluate=evaluate,
        headline=("reward", "format_rate", "accuracy", "kl"), desc="grpo",
    )
    run.checkpointer.close()
    summary = {"out_dir": str(out_dir), "steps": sections["loop"].steps}
    if final.completed:
        summary["hf_folder"] = str(save_final(out_dir, final.state.params, run.config, run.tokenizer_dir,
                                              prompt_family=family.name))
        if evaluate is not None:
            summary["eval"] = evaluate(final.state)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"[prorank] stage 1 done: {json.dumps(summary)}", flush=True)
    return summary


def repeat_forever(data):
    """Training length is loop.steps; the training data repeats as often as that needs."""
    import dataclasses

    return dataclasses.replace(data, num_epochs=None)
