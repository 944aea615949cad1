"""Stage 1: the GRPO loss, the rollout stage the loop pulls batches from, the update of one
rollout (several optimizer steps when grpo.updates_per_rollout > 1) and the held-out
greedy accuracy.

The loss is a pure function of (params, batch); the loop, optimizer, sharding,
non-finite guard, metrics and checkpoints come from prorank_jax.training.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from prorank_jax import sampling, training
from prorank_jax import sharding as shd
from prorank_jax.config import ModelConfig
from prorank_jax.score import rerank_scores
from rl.config import GRPOConfig
from rl.loss import grpo_loss_terms, reduce_sums
from rl.metrics import binary_auc
from rl.rollout import agree_width, completion_logprobs, rollout, sampling_config


def grpo_loss(params, batch: Mapping[str, jax.Array], *, config: ModelConfig, grpo: GRPOConfig):
    """GRPO objective on one rollout batch; returns (loss, metrics)."""
    mask = batch["completion_mask"].astype(jnp.float32)
    logp, entropy = completion_logprobs(params, config, batch["prompt_ids"], batch["prompt_mask"],
                                        batch["completion_ids"], batch["completion_mask"], grpo.temperature,
                                        with_entropy=True)
    # One update per rollout: the sampling policy is the current one, so old = logp
    # with its gradient stopped (ratio exactly 1, gradient = A * grad logp).
    old_logp = batch["old_logp"] if "old_logp" in batch else jax.lax.stop_gradient(logp)
    ref_logp = batch.get("ref_logp")
    loss_sum, denominator, sums = grpo_loss_terms(
        logp, old_logp, ref_logp, batch["advantages"], mask,
        epsilon_low=grpo.epsilon_low, epsilon_high=grpo.epsilon_high, beta=grpo.beta,
        aggregation=grpo.loss_aggregation, max_completion_tokens=grpo.max_completion_tokens,
    )
    metrics = {name: reduce_sums(*value) for name, value in sums.items()}
    metrics["entropy"] = jnp.sum(entropy * mask) / jnp.maximum(mask.sum(), 1.0)
    return reduce_sums(loss_sum, denominator), metrics


def repeated_updates(train_step, updates: int):
    """GRPO's several updates per rollout: `updates` optimizer steps on one rollout batch (the
    ratio of the later ones is taken against batch["old_logp"], the policy that sampled);
    returns the last update's metrics. The loop counts a rollout as one step, so the
    optimizer's schedule runs over loop.steps * updates (launch.runner.start_run)."""

    def step(state, batch):
        for _ in range(updates):
            state, metrics = train_step(state, batch)
        return state, metrics

    return step


def grpo_train_step(config: ModelConfig, grpo: GRPOConfig, optimizer, *, mesh, state_sharding):
    """The update of one rollout batch: grpo_loss under training.lazy_train_step, applied
    grpo.updates_per_rollout times."""
    return training.lazy_train_step(functools.partial(grpo_loss, config=config, grpo=grpo), optimizer, mesh=mesh,
                                    state_sharding=state_sharding,
                                    per_batch=functools.partial(repeated_updates, updates=grpo.updates_per_rollout))


@dataclasses.dataclass
class GRPOStage:
    """Everything one GRPO run holds between steps (built by launch/train_grpo.py)."""

    config: ModelConfig
    grpo: GRPOConfig
    tokenizer: Any
    ref_params: Any
    prompts: Any  # iterator of {"input_ids", "attention_mask", "label"} numpy batches
    sampler: sampling.SamplingConfig = None

    def __post_init__(self):
        if self.sampler is None:
            self.sampler = sampling_config(self.grpo, self.tokenizer, self.config)

    def produce(self, state: training.TrainState, rng: jax.Array) -> training.StepOutput:
        prompts = next(self.prompts)
        batch, metrics = rollout(state.params, self.ref_params, self.config, prompts, rng, self.grpo,
                                 self.sampler, self.tokenizer)
        # The tokens the update runs through the model: each prompt once, then its completions.
        tokens = int(batch["prompt_mask"].sum() + batch["completion_mask"].sum())
        return training.StepOutput(batch=batch, host_metrics=metrics, tokens=tokens,
                                   host_weights=rollout_metric_weights(metrics, batch, self.grpo.group_size))


def rollout_metric_weights(metrics, batch, group_size: int) -> dict[str, int]:
    """How many items each of rollout()'s means is over on this process: the per-group
    ones over its groups, the others over its completions."""
    completions = int(batch["completion_ids"].shape[0])
    per_group = {"reward_std_in_group", "groups_without_signal"}
    return {name: completions // group_size if name in per_group else completions for name in metrics}


def greedy_accuracy(params, config: ModelConfig, batches, tokenizer, sampler: sampling.SamplingConfig,
                    label_ids: tuple[int, int] | None = None, answers: tuple[str, str] = ("0", "1")) -> dict:
    """Held-out accuracy of greedy answers, with the majority-class rate beside it.

    answers = (not relevant, relevant) answer texts of the prompt family (GRPOConfig.allowed_labels).
    With label_ids = (id("1"), id("0")) it also reads the score s = logit("1") - logit("0")
    of every pair: score_accuracy is that of answering "1" when s > 0 (the greedy answer
    once the format is learnt) and score_auc how well s orders relevant above non-relevant
    pairs whatever the threshold, so a policy that still discriminates but answers "0"
    everywhere can be told from one that no longer reads its input.

    On several processes each one reads its own shard of the evaluation batches (all with
    the same number of batches, padded with masked rows); the batches enter the jitted
    calls as global arrays (as in rl.rollout) and the per-pair results of all processes are
    gathered before the metrics are taken, so every process returns the same numbers.
    """
    greedy = dataclasses.replace(sampler, greedy=True, temperature=0.0)
    mesh = shd.mesh_of(params)
    to_device = dict if mesh is None else functools.partial(shd.shard_batch, mesh=mesh)
    to_host = np.asarray if mesh is None else functools.partial(shd.process_local_rows, mesh=mesh)
    columns: dict[str, list] = {"correct": [], "formatted": [], "label": [], "keep": [], "score": []}
    for batch in batches:
        ids, mask = agree_width(np.asarray(batch["input_ids"]), np.asarray(batch["attention_mask"]))
        prompts = to_device({"ids": ids, "mask": mask})
        index = None if mesh is None else shd.global_row_index(ids.shape[0], mesh)
        out = sampling.sample(params, config, prompts["ids"], prompts["mask"], jax.random.key(0), greedy,
                              prompt_index=index, bucketed=True)
        texts = sampling.completion_texts(tokenizer, to_host(out.tokens), to_host(out.completion_mask),
                                          greedy.eos_token_ids)
        labels = np.asarray(batch["label"]).astype(int)
        replies = [text.strip() for text in texts]
        columns["correct"].append(np.array([r == answers[int(y)] for r, y in zip(replies, labels)], bool))
        columns["formatted"].append(np.array([r in answers for r in replies], bool))
        columns["label"].append(labels)
        columns["keep"].append(np.asarray(batch.get("example_mask", np.ones(len(texts))), bool))
        if label_ids is not None:
            columns["score"].append(to_host(_scores_jit(params, prompts["ids"], prompts["mask"], config=config,
                                                        yes_id=label_ids[0], no_id=label_ids[1])))
    pairs = {k: _all_processes(np.concatenate(v)) for k, v in columns.items() if v}
    keep = pairs["keep"] if "keep" in pairs else np.zeros((0,), bool)
    total = int(keep.sum())
    if total == 0:
        raise ValueError("greedy_accuracy: the evaluation set is empty")
    labels_arr = pairs["label"][keep]
    positives = int(labels_arr.sum())
    majority = max(positives, total - positives) / total
    metrics = {"accuracy": int(pairs["correct"][keep].sum()) / total,
               "format_rate": int(pairs["formatted"][keep].sum()) / total, "majority_rate": majority,
               "pairs": total}
    if label_ids is not None:
        scores_arr = pairs["score"][keep].astype(np.float64)
        metrics["score_accuracy"] = float(np.mean((scores_arr > 0) == (labels_arr == 1)))
        metrics["score_auc"] = binary_auc(scores_arr, labels_arr)
    return metrics


def _all_processes(values: np.ndarray) -> np.ndarray:
    """Every process's rows of a per-pair column, process 0's first (the rows themselves on one process)."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values, tiled=True))


@functools.partial(jax.jit, static_argnames=("config", "yes_id", "no_id"))
def _scores_jit(params, input_ids, attention_mask, *, config, yes_id, no_id):
    return rerank_scores(params, config, input_ids, attention_mask, yes_id, no_id)
