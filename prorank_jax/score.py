"""The ProRank score: logit("1") - logit("0") at the last position, and nothing else.

Computed as h_last · (W[:, yes] - W[:, no]) in float32, so only two columns of the
LM head are read and no vocabulary-sized tensor is formed. It is the method's one
score, so it lives in the core: stage 1's held-out evaluation (rl.train), stage 2's loss
(scoring.train), inference (scoring.reranker) and export's self-check all call this same
function.

Inference can also score prompts that share a prefix (every pair of one query starts
with the same chat prefix and query ids) without recomputing it: `prefix_cache` runs
the unique prefixes once and keeps their keys/values, `scores_after_prefix` runs only
each pair's remainder on top of its prefix's cache. The score is the same function of
the same hidden state, so the two paths agree to float noise.
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


def rerank_scores(
    params, config: ModelConfig, input_ids, attention_mask, yes_id: int, no_id: int, token_slots=None
) -> jax.Array:
    """Scores [batch] of left-padded prompts (the last column is every row's last real token).

    token_slots runs only those tokens through the dense layers (packed execution, see
    model.forward_hidden); rows it leaves out get meaningless scores."""
    hidden, _ = model.forward_hidden(params, config, input_ids, attention_mask, token_slots=token_slots)
    if token_slots is None:
        last = model.last_hidden(hidden)
    else:
        batch, length = input_ids.shape
        last = _packed_rows(hidden, token_slots, batch, length, jnp.full((batch,), length - 1))
    return scores_from_hidden(last, score_direction(params, config, yes_id, no_id))


def _packed_rows(hidden, token_slots, batch: int, length: int, columns) -> jax.Array:
    """Packed hidden states [N, D] of slot (b, columns[b]) for every row b: [batch, D]."""
    where = model.slot_tokens(token_slots, batch * length).reshape(batch, length)
    index = jnp.take_along_axis(where, columns[:, None].astype(jnp.int32), axis=1)[:, 0]
    return jnp.take(hidden, index, axis=0, mode="clip")


# ----------------------------------------------------------------------------- shared prefixes
def prefix_cache(params, config: ModelConfig, prefix_ids, prefix_mask) -> model.KVCache:
    """Keys/values of left-padded prefixes [U, P]: a cache of exactly P slots, all written.

    Left padding puts every prefix's last real token in slot P - 1, so whatever comes
    next starts at slot P for every row; the padded slots stay invalid.
    """
    rows, width = prefix_ids.shape
    cache = model.init_cache(config, rows, width)
    _, cache = model.forward_hidden(params, config, prefix_ids, prefix_mask, cache=cache)
    return cache


def scores_after_cache(
    params,
    config: ModelConfig,
    cache: model.KVCache,
    rest_ids,
    rest_lengths,
    yes_id: int,
    no_id: int,
    token_slots=None,
) -> jax.Array:
    """Scores [B] of prompts whose beginnings are in `cache` (one row per prompt) and whose
    remainders rest_ids [B, R] are right-padded: row b's real tokens are its first
    rest_lengths[b] >= 1 columns, and the score is read at the last of them. Padding on the
    right keeps the pads after every real token, where the causal mask hides them.
    token_slots packs the remainders' tokens as in rerank_scores."""
    batch, width = rest_ids.shape
    rest_mask = jnp.arange(width)[None, :] < rest_lengths[:, None]
    hidden, _ = model.extend_hidden(params, config, cache, rest_ids, rest_mask, token_slots=token_slots)
    if token_slots is None:
        last = jnp.take_along_axis(hidden, (rest_lengths - 1)[:, None, None], axis=1)[:, 0]
    else:
        last = _packed_rows(hidden, token_slots, batch, width, rest_lengths - 1)
    return scores_from_hidden(last, score_direction(params, config, yes_id, no_id))


def scores_after_prefix(
    params,
    config: ModelConfig,
    cache: model.KVCache,
    rows_of_prefix,
    rest_ids,
    rest_lengths,
    yes_id: int,
    no_id: int,
) -> jax.Array:
    """Scores [B] of prompts prefix[rows_of_prefix[b]] + rest[b], the prefixes' cache from
    `prefix_cache` ([U, P]) and the remainders right-padded as in `scores_after_cache`.

    Equals rerank_scores on the joined, left-padded prompts up to float noise: the prefix
    keeps its positions 0..p-1 and the remainder continues at p, as in one forward.
    """
    rows = model.take_cache_rows(cache, rows_of_prefix)
    return scores_after_cache(params, config, rows, rest_ids, rest_lengths, yes_id, no_id)
