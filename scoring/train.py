"""Stage 2: fine-grained score learning on s = logit("1") - logit("0") at the last position.

No new parameters: the score is prorank_jax.score.rerank_scores (two LM-head columns
at the last position), the losses are scoring.losses.combined_score_loss, and the
loop, optimizer, sharding, non-finite guard, metrics and checkpoints come from
prorank_jax.training. This module holds the pure loss on a stage-2 batch, the
stage object the loop pulls batches from, and the held-out validation.

Teacher soft labels: ``score_loss`` passes ``batch["teacher_scores"]`` ([B, 1+k]
float32) to the loss when the batch has it, which ``label_mode="teacher"`` needs.
The stage-2 data sources (BEIR / JSONL / HF / tfds groups) carry no teacher
scores today, so `prorank train-score` refuses ``label_mode="teacher"`` (see
``check_label_mode``) rather than training on missing targets.

Validation (``ValidationSet``, ``ScoreStage.validate``): for every held-out query
the candidates are the documents of its stage-2 groups, i.e. every document
judged relevant (each is a group's positive) plus its negatives (lower-graded
judged documents, run hard negatives, random documents). The qrels are those
groups' labels, so every relevant document is a candidate and nDCG@10 / RR@10
(scoring.metrics.evaluate_run, trec_eval semantics) measure the ordering of a
complete relevant set among a few distractors: cheap, and source-independent
(it works for JSONL / HF groups that have no corpus or first-stage run).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prorank_jax import sharding as shd
from prorank_jax import training
from prorank_jax.config import ModelConfig
from prorank_jax.data.examples import GroupExample
from prorank_jax.dtypes import dtype_of
from scoring.losses import ScoreLossConfig, combined_score_loss
from prorank_jax.score import rerank_scores

VALIDATION_MEASURES = {"ndcg@10": "nDCG@10", "rr@10": "RR@10"}


# ----------------------------------------------------------------------------- the loss
def group_scores(params, config: ModelConfig, input_ids, attention_mask, yes_id: int, no_id: int) -> jax.Array:
    """Scores [B, 1+k] of grouped prompts [B, 1+k, L]: one forward over B*(1+k) rows."""
    rows, slots, length = input_ids.shape
    flat = rerank_scores(params, config, input_ids.reshape(rows * slots, length),
                         attention_mask.reshape(rows * slots, length), yes_id, no_id)
    return flat.reshape(rows, slots)


def slot_mask(batch: Mapping[str, Any]) -> jax.Array:
    """Present documents of real rows: doc_mask * example_mask[:, None], float32 [B, 1+k]."""
    doc_mask = jnp.asarray(batch["doc_mask"], jnp.float32)
    return doc_mask * jnp.asarray(batch["example_mask"], jnp.float32)[:, None]


def ranking_metrics(scores, mask) -> dict[str, jax.Array]:
    """Margin and in-batch accuracy of the positive (slot 0) over its present negatives.

    margin: mean of s_0 - s_j over present (positive, negative j) pairs.
    accuracy: fraction of rows (positive present, >= 1 negative present) whose
      positive scores strictly above every present negative.
    """
    s = jnp.asarray(scores, jnp.float32)
    on = jnp.asarray(mask, jnp.float32) > 0
    pair = on[:, :1] & on[:, 1:]
    diff = s[:, :1] - s[:, 1:]
    pairs = jnp.sum(pair.astype(jnp.float32))
    margin = jnp.sum(jnp.where(pair, diff, 0.0)) / jnp.maximum(pairs, 1.0)
    valid = jnp.any(pair, axis=1)
    correct = valid & jnp.all(jnp.where(pair, diff > 0, True), axis=1)
    accuracy = jnp.sum(correct.astype(jnp.float32)) / jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0)
    return {"margin": margin, "accuracy": accuracy}


def score_loss(params, batch: Mapping[str, jax.Array], *, config: ModelConfig, loss_config: ScoreLossConfig,
               yes_id: int, no_id: int):
    """Stage-2 objective on one batch (see prorank_jax.data.pipeline for its layout).

    Returns (loss, metrics): the loss terms and counts of combined_score_loss, plus
    "margin" and "accuracy" (ranking_metrics) and "score_mean" over present slots.
    """
    scores = group_scores(params, config, batch["input_ids"], batch["attention_mask"], yes_id, no_id)
    mask = slot_mask(batch)
    loss, metrics = combined_score_loss(scores, batch["labels"], mask, loss_config,
                                        teacher_scores=batch.get("teacher_scores"))
    metrics = dict(metrics)
    observed = jax.lax.stop_gradient(scores)
    metrics.update(ranking_metrics(observed, mask))
    metrics["score_mean"] = jnp.sum(observed * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    return loss, metrics


def check_label_mode(loss_config: ScoreLossConfig, batch_keys: Sequence[str]) -> None:
    """label_mode="teacher" with pointwise BCE needs teacher scores in every batch."""
    if loss_config.label_mode == "teacher" and loss_config.pointwise_weight and "teacher_scores" not in batch_keys:
        raise ValueError(
            "loss.label_mode='teacher' needs a 'teacher_scores' array in each stage-2 batch, but the data "
            f"pipeline gives only {sorted(batch_keys)}; use label_mode 'binary' or 'graded'"
        )


# ----------------------------------------------------------------------------- validation
@dataclasses.dataclass(frozen=True)
class ValidationSet:
    """Held-out queries, their candidate documents and the graded judgments of those."""

    queries: dict[str, str]  # query key -> text
    documents: dict[str, str]  # doc key -> text
    candidates: dict[str, list[str]]  # query key -> doc keys, in first-seen order
    qrels: dict[str, dict[str, int]]  # query key -> doc key -> grade

    @property
    def num_pairs(self) -> int:
        return sum(len(docs) for docs in self.candidates.values())


def _key(given_id: str, text: str, prefix: str) -> str:
    # Sources without ids (most JSONL files) leave them empty; the text then names the item.
    return given_id or f"{prefix}:{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"


def validation_set(examples: Sequence[GroupExample]) -> ValidationSet:
    """Candidates and qrels from stage-2 groups (see the module docstring).

    A document seen in several groups of one query keeps its highest label.
    Raises ValueError when no group has a relevant (label > 0) document.
    """
    queries: dict[str, str] = {}
    documents: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for example in examples:
        qkey = _key(example.query_id, example.query, "query")
        queries[qkey] = example.query
        judged = qrels.setdefault(qkey, {})
        for doc_id, text, label in zip(example.doc_ids, example.documents, example.labels):
            dkey = _key(doc_id, text, "doc")
            documents[dkey] = text
            judged[dkey] = max(int(label), judged.get(dkey, int(label)))
    if not any(grade > 0 for judged in qrels.values() for grade in judged.values()):
        raise ValueError(f"validation set of {len(examples)} groups has no document with a label > 0")
    return ValidationSet(queries, documents, {q: list(d) for q, d in qrels.items()}, qrels)


def rerank_validation(reranker, validation: ValidationSet, *, instruction: str | None = None,
                      batch_size: int | None = None) -> dict[str, float]:
    """nDCG@10 and RR@10 of `reranker` (anything with Reranker.predict) on the candidates."""
    from scoring.evaluate import candidate_pairs, runs_from_scores
    from scoring.metrics import evaluate_run

    pairs = candidate_pairs(validation.candidates)
    scores = reranker.predict([validation.queries[q] for q, _ in pairs], [validation.documents[d] for _, d in pairs],
                              instruction=instruction, batch_size=batch_size)
    run = runs_from_scores(pairs, scores, validation.candidates)
    means, _ = evaluate_run(validation.qrels, run, tuple(VALIDATION_MEASURES.values()))
    return {key: means[name] for key, name in VALIDATION_MEASURES.items()}


def validation_reranker(config: ModelConfig, params, tokenizer, *, max_length: int, batch_size: int,
                        prompt_family: str | None = None):
    """A scoring.reranker.Reranker for ScoreStage.validate, in the model's compute dtype.

    It is built once per run (its jitted scorer then compiles each shape once); the
    weights it was built with are dropped at once, validate() lends it the current ones.
    """
    from scoring.reranker import Reranker

    del params  # training params may span processes; validate() lends them, on their own mesh
    reranker = Reranker(config, None, tokenizer, max_length=max_length, dtype=config.dtype,
                        batch_size=batch_size, show_progress=False, prompt_family=prompt_family)
    return reranker


# ----------------------------------------------------------------------------- the stage
def agree_group_width(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Left-pad this process's [B, 1+k, L] group prompts to the widest L over all processes.

    Each process's iterator pads its batch to its own length bucket, but one step's global
    arrays need one shape: processes compiling different widths abort in the step's first
    collective. The widest local bucket is a bucket too, and positions come from the mask,
    so the scores do not change."""
    length = batch["input_ids"].shape[-1]
    pad = shd.max_over_processes(length) - length
    if not pad:
        return dict(batch)
    widths = ((0, 0), (0, 0), (pad, 0))
    return {**batch, "input_ids": np.pad(batch["input_ids"], widths),
            "attention_mask": np.pad(batch["attention_mask"], widths)}


@dataclasses.dataclass
class ScoreStage:
    """Everything one stage-2 run holds between steps (built by launch/train_score.py).

    batches: the stage-2 BatchIterator (numpy batches, see the pipeline).
    reranker: a scoring.reranker.Reranker on this run's model and tokenizer, used by
      `validate`; built once so its compiled shapes are reused across validations.
    validation: the held-out ValidationSet, or None.
    """

    batches: Iterator[Mapping[str, np.ndarray]]
    reranker: Any = None
    validation: ValidationSet | None = None
    instruction: str | None = None

    def produce(self, state: training.TrainState, rng: jax.Array) -> training.StepOutput:
        del state, rng  # stage 2 draws nothing at random on the device side
        batch = agree_group_width(next(self.batches))
        real = int(np.sum(batch["attention_mask"]))
        total = int(np.size(batch["attention_mask"]))
        host = {"documents": float(np.sum(np.asarray(batch["doc_mask"]) * np.asarray(batch["example_mask"])[:, None])),
                "padding_fraction": 1.0 - real / max(total, 1)}
        # documents: this process's part of the step's count; padding: a fraction of its tokens
        return training.StepOutput(batch=batch, host_metrics=host, tokens=real,
                                   host_weights={"padding_fraction": total}, host_totals=frozenset({"documents"}))

    def validate(self, params) -> dict[str, float]:
        """nDCG@10 and RR@10 of `params` on the validation set (rerank_validation)."""
        if self.reranker is None or self.validation is None:
            raise ValueError("ScoreStage.validate needs a reranker and a validation set (eval_data)")
        # The reranker keeps its jitted scorer (compiled shapes are reused); only its weights
        # change. They are cast to its dtype (a no-op when equal) and dropped afterwards, so
        # the reranker never holds buffers that the next train step donates.
        dtype = dtype_of(self.reranker.config.param_dtype)
        self.reranker.params = jax.tree_util.tree_map(lambda x: x.astype(dtype), params)
        try:
            return rerank_validation(self.reranker, self.validation, instruction=self.instruction)
        finally:
            self.reranker.params = None
