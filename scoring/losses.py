"""Stage-2 losses on the relevance score s = logit("1") - logit("0").

Each loss is a pure function returning ``(sum, count)`` in float32 so callers
can accumulate exactly over micro-batches; ``combined_score_loss`` mixes them,
each normalised by its own count.

Layout for the list-shaped losses: ``scores [B, 1+k]`` with column 0 the
positive and columns 1..k its negatives; ``mask`` marks which slots exist.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

# Finite stand-in for -inf on absent list slots: exp() of it underflows to 0,
# yet a row whose slots are all absent still gives a finite logsumexp.
_NEG = -1e9

LABEL_MODES = ("binary", "graded", "teacher")


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def soft_labels_from_teacher(teacher_scores, temperature: float = 1.0):
    """sigmoid(teacher / temperature): a teacher's score turned into a BCE target in (0, 1)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return jax.nn.sigmoid(_f32(teacher_scores) / temperature)


def graded_targets(labels, max_grade: int = 3):
    """Graded qrels 0..max_grade -> BCE targets grade / max_grade, clipped to [0, 1].

    Grade 0 is a hard negative (0), the top grade a hard positive (1), the
    grades between are proportionally soft; with max_grade=1 binary labels pass
    through unchanged. Negative grades (some qrels use -1 / -2 for junk) map to 0.
    """
    if not max_grade > 0:
        raise ValueError(f"max_grade must be > 0, got {max_grade!r}")
    return jnp.clip(_f32(labels) / max_grade, 0.0, 1.0)


def pointwise_bce(scores, targets, mask=None):
    """Binary cross-entropy of sigmoid(s) against targets in [0, 1] (hard or soft).

    -[t log sigmoid(s) + (1 - t) log sigmoid(-s)] evaluated with log_sigmoid,
    finite for any |s|. Returns (masked sum, number of masked-in items).
    """
    s = _f32(scores)
    t = _f32(targets)
    m = jnp.ones_like(s) if mask is None else _f32(mask)
    per_item = -(t * jax.nn.log_sigmoid(s) + (1.0 - t) * jax.nn.log_sigmoid(-s))
    return jnp.sum(jnp.where(m > 0, per_item, 0.0)), jnp.sum(m)


def listwise_softmax_ce(scores, mask, temperature: float = 1.0):
    """Softmax cross-entropy of the positive (column 0) against its present negatives.

    Per row: logsumexp(s_present / T) - s_0 / T. Absent slots are excluded from
    the softmax. Only rows whose positive is present and that have at least one
    present negative count: a row without negatives has zero loss and zero
    gradient, and counting it would only dilute the mean.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    s = _f32(scores)
    on = _f32(mask) > 0
    logits = jnp.where(on, s / temperature, _NEG)
    per_row = jax.nn.logsumexp(logits, axis=1) - logits[:, 0]
    valid = on[:, 0] & jnp.any(on[:, 1:], axis=1)
    return jnp.sum(jnp.where(valid, per_row, 0.0)), jnp.sum(valid.astype(jnp.float32))


def pairwise_logistic(scores, labels, mask=None):
    """RankNet-style logistic loss softplus(-(s_i - s_j)) over every ordered pair in a row.

    A pair (i, j) counts when both slots are present and label_i > label_j, so
    graded labels give every preference they imply (grade 3 over 2 over 0...).
    Returns (sum over pairs, number of pairs).
    """
    s = _f32(scores)
    y = _f32(labels)
    on = jnp.ones_like(s, dtype=bool) if mask is None else _f32(mask) > 0
    diff = s[:, :, None] - s[:, None, :]  # [B, i, j] = s_i - s_j
    pair = (y[:, :, None] > y[:, None, :]) & on[:, :, None] & on[:, None, :]
    # softplus(-x) is the stable log(1 + exp(-x)); off-pair entries are
    # selected away rather than multiplied by 0 so an inf there cannot leak NaN.
    per_pair = jnp.where(pair, jax.nn.softplus(-diff), 0.0)
    return jnp.sum(per_pair), jnp.sum(pair.astype(jnp.float32))


@dataclass(frozen=True)
class ScoreLossConfig:
    """The stage-2 loss mix on s.

    pointwise_weight (0.0), listwise_weight (1.0), pairwise_weight (0.0):
      weights of BCE, listwise softmax CE and pairwise logistic; each term is
      its own mean (sum / count) before weighting; zero-weight terms are not
      computed. Default: listwise only, the standard one-positive-k-negatives
      reranker objective; pointwise BCE calibrates s as a probability logit,
      pairwise uses graded preferences.
    listwise_temperature (1.0): s is divided by it inside the softmax.
    label_mode ("binary"): BCE targets. "binary": label > 0 -> 1 else 0;
      "graded": grade / max_grade (see graded_targets); "teacher":
      sigmoid(teacher_score / teacher_temperature) (needs teacher_scores).
    max_grade (3): top qrel grade for "graded".
    teacher_temperature (1.0): temperature for "teacher" soft labels.
    """

    pointwise_weight: float = 0.0
    listwise_weight: float = 1.0
    pairwise_weight: float = 0.0
    listwise_temperature: float = 1.0
    label_mode: str = "binary"
    max_grade: int = 3
    teacher_temperature: float = 1.0

    def __post_init__(self):
        def fail(name, msg):
            raise ValueError(f"ScoreLossConfig.{name}: {msg} (got {getattr(self, name)!r})")

        for name in ("pointwise_weight", "listwise_weight", "pairwise_weight"):
            w = getattr(self, name)
            if not (math.isfinite(w) and w >= 0):
                fail(name, "must be a finite float >= 0")
        if self.pointwise_weight == self.listwise_weight == self.pairwise_weight == 0:
            fail("listwise_weight", "at least one loss weight must be > 0")
        if not (self.listwise_temperature > 0 and math.isfinite(self.listwise_temperature)):
            fail("listwise_temperature", "must be a finite float > 0")
        if self.label_mode not in LABEL_MODES:
            fail("label_mode", f"must be one of {LABEL_MODES}")
        if not (isinstance(self.max_grade, int) and self.max_grade > 0):
            fail("max_grade", "must be an int > 0")
        if not (self.teacher_temperature > 0 and math.isfinite(self.teacher_temperature)):
            fail("teacher_temperature", "must be a finite float > 0")

    def replace(self, **changes) -> "ScoreLossConfig":
        return dataclasses.replace(self, **changes)


def bce_targets(labels, config: ScoreLossConfig, teacher_scores=None):
    """BCE targets for ``labels`` under ``config.label_mode``."""
    if config.label_mode == "binary":
        return (_f32(labels) > 0).astype(jnp.float32)
    if config.label_mode == "graded":
        return graded_targets(labels, config.max_grade)
    if teacher_scores is None:
        raise ValueError("label_mode='teacher' needs teacher_scores")
    return soft_labels_from_teacher(teacher_scores, config.teacher_temperature)


def combined_score_loss(scores, labels, mask, config: ScoreLossConfig, teacher_scores=None):
    """Weighted mix of the configured losses on ``scores [B, 1+k]``.

    Returns ``(loss, metrics)``; metrics hold each active term's mean and its
    count (under "<term>_loss" / "<term>_count"), and "loss".
    """
    total = jnp.zeros((), jnp.float32)
    metrics = {}
    terms = []
    if config.pointwise_weight:
        targets = bce_targets(labels, config, teacher_scores)
        terms.append(("pointwise", config.pointwise_weight, pointwise_bce(scores, targets, mask)))
    if config.listwise_weight:
        terms.append(
            ("listwise", config.listwise_weight,
             listwise_softmax_ce(scores, mask, config.listwise_temperature))
        )
    if config.pairwise_weight:
        terms.append(("pairwise", config.pairwise_weight, pairwise_logistic(scores, labels, mask)))
    for name, weight, (term_sum, count) in terms:
        mean = term_sum / jnp.maximum(count, 1.0)
        total = total + weight * mean
        metrics[f"{name}_loss"] = mean
        metrics[f"{name}_count"] = count
    metrics["loss"] = total
    return total, metrics
