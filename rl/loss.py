"""The GRPO objective as a pure function returning (sum, denominator).

Returning the un-normalised sum and its denominator (instead of a mean) keeps
gradient accumulation exact: over micro-batches the loss is
``sum(loss_sums) / sum(denominators)``, identical to the full batch. The
aggregations ("grpo", "bnpo", "dr_grpo") are registered by name; each maps the
masked per-token loss to such a pair.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from prorank_jax.registry import Registry

# aggregate(per_token_loss [N, T], mask [N, T] float, max_completion_tokens) -> (sum, denominator)
AggregationFn = Callable[[jnp.ndarray, jnp.ndarray, int], tuple[jnp.ndarray, jnp.ndarray]]

_AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation")
register_loss_aggregation = _AGGREGATIONS.register
registered_loss_aggregations = _AGGREGATIONS.names
get_loss_aggregation = _AGGREGATIONS.__getitem__  # unknown name: KeyError listing the registered ones


@register_loss_aggregation("grpo")
def _aggregate_grpo(per_token, mask, max_completion_tokens):
    del max_completion_tokens
    # Clamping the token count at 1 makes an empty (all-masked) sequence
    # contribute 0 instead of 0/0; it still counts in the sequence denominator,
    # as in TRL.
    per_seq = jnp.sum(per_token * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    return jnp.sum(per_seq), jnp.asarray(per_token.shape[0], jnp.float32)


@register_loss_aggregation("bnpo")
def _aggregate_bnpo(per_token, mask, max_completion_tokens):
    del max_completion_tokens
    return jnp.sum(per_token * mask), jnp.sum(mask)


@register_loss_aggregation("dr_grpo")
def _aggregate_dr_grpo(per_token, mask, max_completion_tokens):
    return (
        jnp.sum(per_token * mask),
        jnp.asarray(per_token.shape[0] * max_completion_tokens, jnp.float32),
    )


def reduce_sums(loss_sum, denominator):
    """sum / denominator with the denominator clamped at 1 (an all-masked batch gives 0, not NaN)."""
    return loss_sum / jnp.maximum(denominator, 1.0)


def grpo_loss_terms(
    logp: jnp.ndarray,
    old_logp: jnp.ndarray,
    ref_logp: jnp.ndarray | None,
    advantages: jnp.ndarray,
    completion_mask: jnp.ndarray,
    *,
    epsilon_low: float,
    epsilon_high: float,
    beta: float,
    aggregation: str,
    max_completion_tokens: int,
) -> tuple[jnp.ndarray, jnp.ndarray, dict[str, tuple[jnp.ndarray, jnp.ndarray]]]:
    """Clipped-surrogate GRPO loss with a k3 KL penalty to the reference.

    Args:
      logp: [N, T] log-probs of the sampled tokens under the policy being trained.
      old_logp: [N, T] the same under the rollout policy (treated as constant).
      ref_logp: [N, T] the same under the frozen reference; may be None iff beta == 0.
      advantages: [N] one advantage per completion, broadcast over its tokens.
      completion_mask: [N, T] bool/float, 1 on completion tokens (through the first EOS).

    Per token: ratio = exp(logp - old_logp),
      loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * k3,
      k3 = exp(ref - logp) - (ref - logp) - 1  (>= 0, unbiased for KL(policy || ref)).

    Returns ``(loss_sum, denominator, metrics)``; ``metrics`` maps name ->
    ``(sum, denominator)`` for masked token means of "kl", "ratio",
    "clip_low" (ratio < 1 - eps_low with A < 0), "clip_high" (ratio > 1 + eps_high
    with A > 0) and "clip_region" (either): the tokens whose gradient is cut.
    """
    aggregate = get_loss_aggregation(aggregation)
    if ref_logp is None and beta != 0:
        raise ValueError("ref_logp is required when beta != 0")
    mask = jnp.asarray(completion_mask).astype(jnp.float32)
    logp = jnp.asarray(logp, jnp.float32)
    adv = jnp.asarray(advantages, jnp.float32)[:, None]
    on = mask > 0

    # Padding positions may hold garbage (even -inf) log-probs; selecting 0
    # before exp keeps both the value and the gradient there finite.
    log_ratio = jnp.where(on, logp - jnp.asarray(old_logp, jnp.float32), 0.0)
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = -jnp.minimum(ratio * adv, clipped_ratio * adv)

    if ref_logp is not None:
        ref_log_ratio = jnp.where(on, jnp.asarray(ref_logp, jnp.float32) - logp, 0.0)
        kl = jnp.exp(ref_log_ratio) - ref_log_ratio - 1.0
    else:
        kl = jnp.zeros_like(logp)
    if beta != 0:
        per_token = per_token + beta * kl

    loss_sum, denominator = aggregate(per_token, mask, max_completion_tokens)

    n_tokens = jnp.sum(mask)
    clip_low = ((ratio < 1.0 - epsilon_low) & (adv < 0)).astype(jnp.float32)
    clip_high = ((ratio > 1.0 + epsilon_high) & (adv > 0)).astype(jnp.float32)
    clip_region = jnp.maximum(clip_low, clip_high)

    def token_mean(x):
        return jnp.sum(x * mask), n_tokens

    metrics = {
        "kl": token_mean(kl),
        "ratio": token_mean(ratio),
        "clip_low": token_mean(clip_low),
        "clip_high": token_mean(clip_high),
        "clip_region": token_mean(clip_region),
    }
    return loss_sum, denominator, metrics
