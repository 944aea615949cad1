"""The jitted model programs the Reranker runs: whole prompts, and the shared-prefix path's
prefill, cache-row gather and extend. Each compiles once per input shape (jax.jit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax

from prorank_jax.config import ModelConfig
from prorank_jax.model import take_cache_rows
from prorank_jax.score import prefix_cache, rerank_scores, scores_after_cache


def jitted_scorer(config: ModelConfig, yes_id: int, no_id: int):
    """rerank_scores with the model fixed, jitted: compiled once per (rows, length) input shape.

    The config is closed over rather than passed as a static argument because it need not
    be hashable (eos_token_id may be a list).
    """
    return jax.jit(
        lambda params, ids, mask, slots=None: rerank_scores(params, config, ids, mask, yes_id, no_id, slots)
    )


@dataclass(frozen=True)
class PrefixScorer:
    """The shared-prefix path's jitted pieces (see prorank_jax.score):
      prefill(params, prefix_ids, prefix_mask) -> cache, compiled per (rows, prefix bucket);
      take(cache, rows) -> the rows' caches, a gather compiled per (chunk rows, prefix
        bucket, batch rows) with no model inside, so it compiles in milliseconds;
      extend(params, cache, rest_ids, rest_lengths, token_slots) -> scores, compiled per
        (rows, prefix bucket, remainder bucket, packed length).
    Keeping the gather apart keeps the number of chunk row counts out of the model programs.
    """

    prefill: Any
    take: Any
    extend: Any


def jitted_prefix_scorer(config: ModelConfig, yes_id: int, no_id: int) -> PrefixScorer:
    return PrefixScorer(
        prefill=jax.jit(lambda params, ids, mask: prefix_cache(params, config, ids, mask)),
        take=jax.jit(take_cache_rows),
        extend=jax.jit(
            lambda params, cache, ids, lengths, slots=None: scores_after_cache(
                params, config, cache, ids, lengths, yes_id, no_id, slots
            )
        ),
    )
