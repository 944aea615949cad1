"""`prorank train-score --config FILE [key=value ...]`: stage 2, fine-grained score learning.

Sections of the YAML config: model (ModelSource: a stage-1 run folder, an HF folder,
or a random init when path is null), data and eval_data (DataConfig; eval_data is the
held-out split validated every loop.eval_every steps and logged as eval/ndcg@10 and
eval/rr@10), loss (ScoreLossConfig), optimizer, loop, mesh, and out_dir. Re-running
with the same out_dir resumes from its latest complete checkpoint. At the end the
model is saved as an HF folder (out_dir/hf) and out_dir/summary.json holds the final
validation metrics.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from launch import config as cfglib
from launch.runner import maybe_initialize_distributed
from launch.train_grpo import parse_args, repeat_forever


def main(argv: list[str]) -> int:
    args = parse_args(argv, "prorank train-score", __doc__)
    if args.compile_for:
        # Compiling for a topology needs no other process: the TPU devices are descriptions.
        from launch.compile_for import compile_run

        return compile_run("score", cfglib.load_config(args.config, args.overrides), args.compile_for,
                           dry_run=args.dry_run)
    # First thing, before the config is read, so every process fails or starts together.
    maybe_initialize_distributed()
    raw = cfglib.load_config(args.config, args.overrides)
    run_score(raw, dry_run=args.dry_run)
    return 0


def run_score(raw: dict, dry_run: bool = False) -> dict:
    import jax

    from launch.runner import lazy_train_step, stage_sections, start_run
    from prorank_jax import sharding as shd
    from prorank_jax import training
    from prorank_jax.data.pipeline import DataConfig, load_config_examples, make_stage2_iterator
    from prorank_jax.pretrained import load_tokenizer
    from prorank_jax.prompts import prompt_family
    from rl.train import save_final
    from scoring.losses import ScoreLossConfig
    from scoring.train import ScoreStage, check_label_mode, score_loss, validation_reranker, validation_set

    prepared = stage_sections(raw, dry_run, loss=ScoreLossConfig)
    if prepared is None:
        return {}
    sections, resolved = prepared
    source = raw.get("_source", "config")
    loss: ScoreLossConfig = sections["loss"]
    try:
        check_label_mode(loss, ("input_ids", "attention_mask", "labels", "doc_mask", "example_mask"))
    except ValueError as err:
        raise cfglib.RunConfigError(f"{source}: {err}") from None
    out_dir = Path(raw.get("out_dir") or "runs/score")
    run = start_run(out_dir=out_dir, model_source=sections["model"], optimizer=sections["optimizer"],
                    loop=sections["loop"], mesh=sections["mesh"], resolved_config=resolved)
    data: DataConfig = sections["data"]
    divisor = shd.batch_divisor(run.mesh)
    if (data.batch_size * jax.process_count()) % divisor:
        raise cfglib.RunConfigError(
            f"{source}: data.batch_size={data.batch_size} (x {jax.process_count()} processes) must be a multiple "
            f"of the mesh's batch split, {divisor} (mesh {dict(run.mesh.shape)})"
        )
    tokenizer = load_tokenizer(run.tokenizer_dir, run.config)
    family = prompt_family(resolved["prompt_family"])
    prompt = family.prompt(tokenizer, data.max_length, run.config.max_position_embeddings)
    train_iter = make_stage2_iterator(load_config_examples(data, stage=2), prompt, repeat_forever(data))
    if run.data_state:
        train_iter.set_state(run.data_state)
    stage = ScoreStage(batches=train_iter, instruction=data.instruction)

    evaluate = None
    eval_cfg = sections["eval_data"]
    if eval_cfg is not None:
        stage.validation = validation_set(load_config_examples(eval_cfg, stage=2))
        stage.reranker = validation_reranker(run.config, run.state.params, tokenizer, max_length=eval_cfg.max_length,
                                             batch_size=eval_cfg.batch_size * (1 + eval_cfg.num_negatives),
                                             prompt_family=family.name)
        print(f"[prorank] validation: {len(stage.validation.candidates)} queries, "
              f"{stage.validation.num_pairs} (query, document) pairs", flush=True)

        def evaluate(state):
            return stage.validate(state.params)

    step = lazy_train_step(functools.partial(score_loss, config=run.config, loss_config=loss,
                                             yes_id=prompt.yes_id, no_id=prompt.no_id), run)
    final = training.run_loop(
        state=run.state, start_step=run.resumed_from or 0, train_step=step, produce=stage.produce,
        loop=sections["loop"], out_dir=out_dir, base_rng=run.base_rng, checkpointer=run.checkpointer,
        data_state=train_iter.get_state, evaluate=evaluate,
        headline=("loss", "accuracy", "margin"), desc="score",
    )
    run.checkpointer.close()
    summary = {"out_dir": str(out_dir), "steps": sections["loop"].steps}
    if final.completed:
        summary["hf_folder"] = str(save_final(out_dir, final.state.params, run.config, run.tokenizer_dir,
                                              prompt_family=family.name))
        if evaluate is not None:
            summary["eval"] = evaluate(final.state)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(f"[prorank] stage 2 done: {json.dumps(summary)}", flush=True)
    return summary
