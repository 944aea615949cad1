"""Stage 1's pair-score metric: ROC AUC of the score s against the binary labels.

It lives in rl/ because only stage 1's held-out evaluation (rl.train.greedy_accuracy) reads
it; the ranking metrics of stage 2 and evaluation are scoring.metrics (trec_eval semantics).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def binary_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC of pair scores against binary labels: the chance that a random relevant
    pair outscores a random non-relevant one, a tie counting half (Mann-Whitney U / n1 n0).

    Unlike accuracy it does not depend on where the decision threshold sits, so it tells a
    policy that still ranks pairs but answers "0" to all of them apart from one that has
    stopped reading its input. NaN when either class is absent.
    """
    s = np.asarray(scores, np.float64)
    y = np.asarray(labels).astype(bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"binary_auc: scores {s.shape} and labels {y.shape} must be equal 1-d shapes")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Average ranks handle ties (a tie between a positive and a negative counts 1/2): the
    # k equal values ending at 1-based rank e all get rank e - (k - 1) / 2.
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
