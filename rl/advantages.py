"""Group-relative advantages for GRPO, with the std scaling registered by name.

Rewards arrive as ``[B*G]`` (prompt-major: the G samples of one prompt are
contiguous, as produced by repeating each prompt G times) or ``[B, G]``.
Centering is always by the group mean; the registered *scale* decides what
the centred rewards are divided by.
"""

from __future__ import annotations

from typing import Callable

import jax.numpy as jnp

from prorank_jax.registry import Registry

# scale(centred [B, G], rewards [B, G], ddof, eps) -> advantages [B, G]
ScaleFn = Callable[[jnp.ndarray, jnp.ndarray, int, float], jnp.ndarray]

_SCALES: Registry[ScaleFn] = Registry("advantage scale")
register_advantage_scale = _SCALES.register
registered_advantage_scales = _SCALES.names
get_advantage_scale = _SCALES.__getitem__  # unknown name: KeyError listing the registered ones


@register_advantage_scale("group")
def _scale_group(centred, rewards, ddof, eps):
    return centred / (jnp.std(rewards, axis=1, ddof=ddof, keepdims=True) + eps)


@register_advantage_scale("batch")
def _scale_batch(centred, rewards, ddof, eps):
    # One std over every reward in the batch (TRL scale_rewards="batch"): groups
    # with a small spread are not blown up relative to the others.
    return centred / (jnp.std(rewards, ddof=ddof) + eps)


@register_advantage_scale("none")
def _scale_none(centred, rewards, ddof, eps):
    del rewards, ddof, eps
    return centred


def group_advantages(
    rewards: jnp.ndarray,
    group_size: int,
    scale: str = "group",
    ddof: int = 1,
    eps: float = 1e-4,
) -> jnp.ndarray:
    """(r - group mean) / (std + eps) per the ``scale`` mode; returns a flat ``[B*G]`` float32.

    ``ddof=1`` (default) is the unbiased std, as TRL's torch.std. A group whose
    rewards are all equal gets advantage exactly 0: in float the mean of equal
    values can differ from them by an ulp, and dividing that residue by a tiny
    std + eps would turn it into noise, so such groups are zeroed explicitly.
    ``scale``, ``group_size`` and ``ddof`` are static under jit.
    """
    scale_fn = get_advantage_scale(scale)
    r = jnp.asarray(rewards, dtype=jnp.float32)
    if r.size % group_size:
        raise ValueError(f"{r.size} rewards do not split into groups of {group_size}")
    if not 0 <= ddof < group_size:
        raise ValueError(f"ddof must be in [0, group_size={group_size}), got {ddof}")
    r = r.reshape(-1, group_size)
    centred = r - jnp.mean(r, axis=1, keepdims=True)
    adv = scale_fn(centred, r, ddof, eps)
    degenerate = jnp.max(r, axis=1, keepdims=True) == jnp.min(r, axis=1, keepdims=True)
    return jnp.where(degenerate, 0.0, adv).reshape(-1)
