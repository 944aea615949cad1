"""Stage 1: the GRPO train loop (rollout on the host side, jitted sharded update).

The loss is a pure function of (params, batch); the loop, optimizer, sharding,
non-finite guard, metrics and checkpoints come from prorank_jax.training.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from prorank_jax import sampling, training
from prorank_jax.config import ModelConfig
from rl.config import GRPOConfig
from rl.loss import grpo_loss_terms, reduce_sums
from rl.rollout import completion_logprobs, rollout, sampling_config
from scoring.score import rerank_scores


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
        return training.StepOutput(batch=batch, host_metrics=metrics, tokens=tokens)


def greedy_accuracy(params, config: ModelConfig, batches, tokenizer, sampler: sampling.SamplingConfig,
                    label_ids: tuple[int, int] | None = None, answers: tuple[str, str] = ("0", "1")) -> dict:
    """Held-out accuracy of greedy answers, with the majority-class rate beside it.

    answers = (not relevant, relevant) answer texts of the prompt family (GRPOConfig.allowed_labels).
    With label_ids = (id("1"), id("0")) it also reads the score s = logit("1") - logit("0")
    of every pair: score_accuracy is that of answering "1" when s > 0 (the greedy answer
    once the format is learnt) and score_auc how well s orders relevant above non-relevant
    pairs whatever the threshold, so a policy that still discriminates but answers "0"
    everywhere can be told from one that no longer reads its input.
    """
    from scoring.metrics import binary_auc

    greedy = dataclasses.replace(sampler, greedy=True, temperature=0.0)
    correct = formatted = total = positives = 0
    scores, labels = [], []
    for batch in batches:
        out = sampling.sample(params, config, batch["input_ids"], batch["attention_mask"], jax.random.key(0), greedy)
        texts = sampling.completion_texts(tokenizer, out.tokens, out.completion_mask, greedy.eos_token_ids)
        rows = np.asarray(batch.get("example_mask", np.ones(len(texts))), bool)
        if label_ids is not None:
            batch_scores = np.asarray(_scores_jit(params, batch["input_ids"], batch["attention_mask"],
                                                  config=config, yes_id=label_ids[0], no_id=label_ids[1]))
            scores.extend(batch_scores[rows])
            labels.extend(np.asarray(batch["label"])[rows])
        for text, label, keep in zip(texts, np.asarray(batch["label"]), rows):
            if not keep:
                continue
            answer = text.strip()
            correct += answer == answers[int(label)]
            formatted += answer in answers
            positives += int(label)
            total += 1
    if total == 0:
        raise ValueError("greedy_accuracy: the evaluation set is empty")
    majority = max(positives, total - positives) / total
    metrics = {"accuracy": correct / total, "format_rate": formatted / total, "majority_rate": majority, "pairs": total}
    if label_ids is not None:
        scores_arr, labels_arr = np.asarray(scores, np.float64), np.asarray(labels).astype(int)
        metrics["score_accuracy"] = float(np.mean((scores_arr > 0) == (labels_arr == 1)))
        metrics["score_auc"] = binary_auc(scores_arr, labels_arr)
    return metrics


@functools.partial(jax.jit, static_argnames=("config", "yes_id", "no_id"))
def _scores_jit(params, input_ids, attention_mask, *, config, yes_id, no_id):
    return rerank_scores(params, config, input_ids, attention_mask, yes_id, no_id)


def save_final(out_dir: str | Path, params, config: ModelConfig, tokenizer_dir, prompt_family: str | None = None) -> Path:
    """The final policy as an HF folder beside the checkpoints (what stage 2 starts from), with
    its prompt family in prorank.json (prompts.detect_prompt_family reads it back)."""
    from prorank_jax import hf
    from prorank_jax.prompts import PRORANK_FILE, prorank_file_text

    extra = {PRORANK_FILE: prorank_file_text(prompt_family)} if prompt_family is not None else None
    return hf.save(params, config, Path(out_dir) / "hf", tokenizer_dir=tokenizer_dir, extra_files=extra)
