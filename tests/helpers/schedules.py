"""The optimizer's learning-rate schedule written out by hand, to check optax's against."""

from __future__ import annotations

import math

from prorank_jax.training import OptimizerConfig


def learning_rate_at(config: OptimizerConfig, total_steps: int, step: int) -> float:
    """The schedule's value at a step: linear warmup, then cosine decay to end_lr_ratio."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.learning_rate * step / config.warmup_steps
    decay_steps = max(total_steps, config.warmup_steps + 1) - config.warmup_steps
    progress = min(max(step - config.warmup_steps, 0) / decay_steps, 1.0)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    end = config.learning_rate * config.end_lr_ratio
    return end + (config.learning_rate - end) * cosine
