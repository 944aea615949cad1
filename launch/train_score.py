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

from launch import stage_runner

BATCH_KEYS = ("input_ids", "attention_mask", "labels", "doc_mask", "example_mask")  # what a stage-2 batch holds


def main(argv: list[str]) -> int:
    return stage_runner.main(argv, score_stage(), "prorank train-score", __doc__)


def run_score(raw: dict, dry_run: bool = False, show_config: bool = False) -> dict:
    return stage_runner.run_stage(raw, score_stage(), dry_run=dry_run, show_config=show_config)


def score_stage() -> stage_runner.StageSpec:
    from prorank_jax.data.pipeline import make_stage2_iterator
    from scoring.losses import ScoreLossConfig
    from scoring.train import check_label_mode

    return stage_runner.StageSpec(
        kind="score", number=2, sections={"loss": ScoreLossConfig}, headline=("loss", "accuracy", "margin"),
        make_iterator=make_stage2_iterator, build=build_score,
        check=lambda sections: check_label_mode(sections["loss"], BATCH_KEYS),
    )


def build_score(ctx: stage_runner.StageContext) -> stage_runner.StageParts:
    """Grouped batches through the score loss; nDCG@10 / RR@10 of the held-out groups."""
    import functools

    from prorank_jax import training
    from prorank_jax.data.pipeline import load_config_examples
    from scoring.train import ScoreStage, score_loss, validation_reranker, validation_set

    run = ctx.run
    stage = ScoreStage(batches=ctx.train_iter, instruction=ctx.sections["data"].instruction)
    evaluate = None
    eval_cfg = ctx.sections["eval_data"]
    if eval_cfg is not None:
        stage.validation = validation_set(load_config_examples(eval_cfg, stage=2))
        stage.reranker = validation_reranker(run.config, run.state.params, ctx.tokenizer,
                                             max_length=eval_cfg.max_length,
                                             batch_size=eval_cfg.batch_size * (1 + eval_cfg.num_negatives),
                                             prompt_family=ctx.family.name)
        print(f"[prorank] validation: {len(stage.validation.candidates)} queries, "
              f"{stage.validation.num_pairs} (query, document) pairs", flush=True)

        def evaluate(state):
            return stage.validate(state.params)

    loss_fn = functools.partial(score_loss, config=run.config, loss_config=ctx.sections["loss"],
                                yes_id=ctx.prompt.yes_id, no_id=ctx.prompt.no_id)
    step = training.lazy_train_step(loss_fn, run.optimizer, mesh=run.mesh, state_sharding=run.state_sharding)
    return stage_runner.StageParts(train_step=step, produce=stage.produce, evaluate=evaluate)
