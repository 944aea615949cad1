"""`prorank train-grpo --config FILE [key=value ...]`: stage 1, GRPO prompt warmup.

Sections of the YAML config: model (ModelSource), data and eval_data (DataConfig),
grpo (GRPOConfig), optimizer, loop, mesh, and out_dir. Re-running with the same
out_dir resumes from its latest complete checkpoint.
"""

from __future__ import annotations

from launch import stage_runner


def main(argv: list[str]) -> int:
    return stage_runner.main(argv, grpo_stage(), "prorank train-grpo", __doc__)


def run_grpo(raw: dict, dry_run: bool = False, show_config: bool = False) -> dict:
    return stage_runner.run_stage(raw, grpo_stage(), dry_run=dry_run, show_config=show_config)


def grpo_stage() -> stage_runner.StageSpec:
    from prorank_jax.data.pipeline import make_stage1_iterator
    from rl.config import GRPOConfig

    return stage_runner.StageSpec(
        kind="grpo", number=1, sections={"grpo": GRPOConfig}, headline=("reward", "format_rate", "accuracy", "kl"),
        make_iterator=make_stage1_iterator, build=build_grpo,
        updates_per_step=lambda sections: sections["grpo"].updates_per_rollout,
    )


def build_grpo(ctx: stage_runner.StageContext) -> stage_runner.StageParts:
    """Rollouts from the current policy against the frozen starting one; greedy accuracy on eval_data."""
    from prorank_jax.data.pipeline import load_config_examples, make_stage1_iterator
    from prorank_jax.pretrained import generation_eos_token_ids
    from rl.rollout import sampling_config
    from rl.train import GRPOStage, greedy_accuracy, grpo_train_step

    run, grpo = ctx.run, ctx.sections["grpo"]
    # Every EOS id of the tokenizer, config.json and generation_config.json ends a completion.
    sampler = sampling_config(grpo, ctx.tokenizer, run.config, generation_eos_token_ids(ctx.sections["model"]))
    stage = GRPOStage(run.config, grpo, ctx.tokenizer, ref_params=run.initial_params, prompts=ctx.train_iter,
                      sampler=sampler)
    evaluate = None
    eval_cfg = ctx.sections["eval_data"]
    if eval_cfg is not None:
        eval_examples = load_config_examples(eval_cfg, stage=1)

        def evaluate(state):
            batches = make_stage1_iterator(eval_examples, ctx.prompt, eval_cfg, training=False)
            return greedy_accuracy(state.params, run.config, batches, ctx.tokenizer, stage.sampler,
                                   label_ids=(ctx.prompt.yes_id, ctx.prompt.no_id), answers=grpo.allowed_labels)

    step = grpo_train_step(run.config, grpo, run.optimizer, mesh=run.mesh, state_sharding=run.state_sharding)
    return stage_runner.StageParts(train_step=step, produce=stage.produce, evaluate=evaluate)
