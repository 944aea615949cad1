"""Stage-1 rewards: pure functions of (completion text, label) -> float, by name.

A reward is registered with ``@register_reward("name")``. Its signature is
``fn(completion_text: str, label: str) -> float``; a reward that also needs the
set of admissible answers declares a keyword-only ``allowed_labels`` parameter,
and ``get_reward`` binds it (functools.partial) so every reward the trainer
sees has the same two-argument form.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, Mapping, Sequence

import numpy as np

from prorank_jax.registry import Registry

RewardFn = Callable[[str, str], float]

DEFAULT_ALLOWED_LABELS: tuple[str, ...] = ("0", "1")

_REWARDS: Registry[Callable[..., float]] = Registry("reward")
register_reward = _REWARDS.register
registered_rewards = _REWARDS.names


def get_reward(name: str, allowed_labels: Sequence[str] = DEFAULT_ALLOWED_LABELS) -> RewardFn:
    """The registered reward ``name`` as a ``(completion, label) -> float`` callable."""
    fn = _REWARDS[name]
    if "allowed_labels" in inspect.signature(fn).parameters:
        return functools.partial(fn, allowed_labels=tuple(allowed_labels))
    return fn


@register_reward("format")
def format_reward(
    completion_text: str, label: str, *, allowed_labels: Sequence[str] = DEFAULT_ALLOWED_LABELS
) -> float:
    """1.0 when the answer is exactly one admissible label (surrounding whitespace ignored).

    The label is unused: format is judged independently of correctness so the
    policy is rewarded for answering in the scorable form even when wrong.
    """
    del label
    return 1.0 if completion_text.strip() in allowed_labels else 0.0


@register_reward("correctness")
def correctness_reward(completion_text: str, label: str) -> float:
    """1.0 when the stripped answer equals the gold label, else 0.0."""
    return 1.0 if completion_text.strip() == str(label).strip() else 0.0


def combined_rewards(
    completions: Sequence[str],
    labels: Sequence[str],
    weights: Mapping[str, float],
    *,
    allowed_labels: Sequence[str] = DEFAULT_ALLOWED_LABELS,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted sum of the named rewards for each completion.

    Returns ``(total [N] float32, {name: [N] float32 unweighted})``; the
    per-reward arrays are for logging.
    """
    if len(completions) != len(labels):
        raise ValueError(
            f"completions and labels differ in length: {len(completions)} vs {len(labels)}"
        )
    # Resolve every name before computing anything so a typo fails fast.
    fns = {name: get_reward(name, allowed_labels) for name in weights}
    per_reward = {
        name: np.asarray([fn(c, l) for c, l in zip(completions, labels)], dtype=np.float32).reshape(
            len(completions)
        )
        for name, fn in fns.items()
    }
    total = np.zeros(len(completions), dtype=np.float32)
    for name, values in per_reward.items():
        total += np.float32(weights[name]) * values
    return total, per_reward
