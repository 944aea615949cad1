"""The ProRank score: logit("1") - logit("0") at the last position, and nothing else.

Computed as h_last · (W[:, yes] - W[:, no]) in float32, so only two columns of the
LM head are read and no vocabulary-sized tensor is formed. Training (stage 2) and
inference call this same function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prorank_jax import model
from prorank_jax.config import ModelConfig


def score_direction(params, config: ModelConfig, yes_id: int, no_id: int) -> jax.Array:
    """W[:, yes] - W[:, no] of the output projection, float32 [hidden]."""
    columns = model.lm_head_columns(params, config, jnp.array([yes_id, no_id])).astype(jnp.float32)
    return columns[:, 0] - columns[:, 1]


def scores_from_hidden(hidden_last: jax.Array, direction: jax.Array) -> jax.Array:
    return jnp.dot(hidden_last.astype(jnp.float32), direction, precision=jax.lax.Precision.HIGHEST)


def rerank_scores(params, config: ModelConfig, input_ids, attention_mask, yes_id: int, no_id: int) -> jax.Array:
    """Scores [batch] of left-padded prompts (the last column is every row's last real token)."""
    hidden, _ = model.forward_hidden(params, config, input_ids, attention_mask)
    return scores_from_hidden(model.last_hidden(hidden), score_direction(params, config, yes_id, no_id))
