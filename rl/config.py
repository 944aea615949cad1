"""Stage-1 (GRPO prompt warmup) algorithm settings, in one frozen dataclass.

Every choice that changes the maths of stage 1 lives here, so a run is
described by this object alone; orchestration details (batch size, learning
rate, checkpoint cadence) belong to the trainer's own config.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Mapping

LOSS_AGGREGATIONS = ("grpo", "bnpo", "dr_grpo")
ADVANTAGE_SCALES = ("group", "batch", "none")


def _default_reward_weights() -> dict[str, float]:
    return {"format": 1.0, "correctness": 1.0}


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO settings for teaching the LM to answer the relevance prompt with "1"/"0".

    Sampling
      group_size (G, default 8): completions sampled per prompt; advantages are
        relative within these G samples, so G must be >= 2.
      temperature (1.0): sampling temperature; the policy, rollout and reference
        log-probs in the loss are all taken at this same temperature.
      top_p (1.0 = off), top_k (0 = off): nucleus / top-k filtering at sampling.
      max_completion_tokens (4): decode budget. The answer is a single digit plus
        EOS, so a few tokens suffice; the completion mask runs up to and
        including the first EOS. Also the fixed length of the "dr_grpo"
        denominator.

    Loss (see rl/loss.py)
      beta (0.04): weight of the per-token k3 estimator of KL(policy || frozen
        reference), exp(ref - logp) - (ref - logp) - 1. The reference KL is part
        of the method, so it stays on by default; 0 disables it.
      epsilon_low, epsilon_high (0.2, 0.2): PPO clip range
        [1 - epsilon_low, 1 + epsilon_high] on ratio = exp(logp - old_logp).
        Unequal values give DAPO-style asymmetric ("clip-higher") clipping.
      loss_aggregation ("grpo"): how per-token losses become one number.
        "grpo"    mean over sequences of each sequence's masked token mean
                  (original GRPO; short answers weigh as much as long ones).
        "bnpo"    masked token sum / number of completion tokens in the batch.
        "dr_grpo" masked token sum / (num sequences * max_completion_tokens)
                  (Dr. GRPO: no length normalisation bias).
      updates_per_rollout (1): optimizer steps per batch of rollouts. With 1,
        old_logp == logp at the update and the ratio is exactly 1 (clipping is
        then inactive; only its gradient form remains).

    Advantages (see rl/advantages.py)
      advantage_scale ("group"): A = (r - group mean) / (std + advantage_eps)
        with std the group's std ("group"), the std of all rewards in the batch
        ("batch"; centering stays per group, as in TRL's scale_rewards="batch"),
        or no division at all ("none", Dr. GRPO).
      std_ddof (1): delta degrees of freedom of that std. 1 = the unbiased
        estimator, matching TRL (torch.std default) so results are comparable;
        0 gives the population std. Must be < group_size.
      advantage_eps (1e-4): added to the std so that near-constant groups do
        not explode. Groups whose rewards are all equal get advantage exactly 0.

    Rewards (see rl/rewards.py)
      reward_weights ({"format": 1.0, "correctness": 1.0}): registered reward
        name -> weight; the scalar reward is the weighted sum.
      allowed_labels (("0", "1")): the only answers the "format" reward accepts
        (after stripping whitespace); allowed_labels[label] is the correct answer to a
        pair of that label (0 not relevant, 1 relevant). The training command sets it
        to the prompt family's answers (("no", "yes") for qwen3-reranker).
    """

    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_completion_tokens: int = 4
    beta: float = 0.04
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2
    loss_aggregation: str = "grpo"
    advantage_scale: str = "group"
    std_ddof: int = 1
    advantage_eps: float = 1e-4
    updates_per_rollout: int = 1
    # hash=False: a dict is unhashable, and the config must stay hashable to be
    # a static argument of jitted functions; equality still compares it.
    reward_weights: Mapping[str, float] = field(default_factory=_default_reward_weights, hash=False)
    allowed_labels: tuple[str, ...] = ("0", "1")

    def __post_init__(self):
        # Frozen dataclasses need object.__setattr__ to normalise fields; a tuple
        # and a plain (copied) dict keep the config hashable and YAML-friendly.
        object.__setattr__(self, "allowed_labels", tuple(self.allowed_labels))
        object.__setattr__(self, "reward_weights", dict(self.reward_weights))

        def fail(name, msg):
            raise ValueError(f"GRPOConfig.{name}: {msg} (got {getattr(self, name)!r})")

        if not isinstance(self.group_size, int) or self.group_size < 2:
            fail("group_size", "must be an int >= 2; group advantages need at least two samples")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            fail("temperature", "must be a finite float > 0")
        if not (0.0 < self.top_p <= 1.0):
            fail("top_p", "must be in (0, 1]; 1.0 disables nucleus filtering")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            fail("top_k", "must be an int >= 0; 0 disables top-k filtering")
        if not isinstance(self.max_completion_tokens, int) or self.max_completion_tokens < 1:
            fail("max_completion_tokens", "must be an int >= 1")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            fail("beta", "must be a finite float >= 0")
        if not (0.0 <= self.epsilon_low < 1.0):
            fail("epsilon_low", "must be in [0, 1) so that the lower clip bound stays positive")
        if not (self.epsilon_high >= 0 and math.isfinite(self.epsilon_high)):
            fail("epsilon_high", "must be a finite float >= 0")
        if self.loss_aggregation not in LOSS_AGGREGATIONS:
            fail("loss_aggregation", f"must be one of {LOSS_AGGREGATIONS}")
        if self.advantage_scale not in ADVANTAGE_SCALES:
            fail("advantage_scale", f"must be one of {ADVANTAGE_SCALES}")
        if not isinstance(self.std_ddof, int) or not (0 <= self.std_ddof < self.group_size):
            fail("std_ddof", "must be an int in [0, group_size)")
        if not (self.advantage_eps >= 0 and math.isfinite(self.advantage_eps)):
            fail("advantage_eps", "must be a finite float >= 0")
        if not isinstance(self.updates_per_rollout, int) or self.updates_per_rollout < 1:
            fail("updates_per_rollout", "must be an int >= 1")
        if not self.reward_weights:
            fail("reward_weights", "must name at least one reward")
        for name, w in self.reward_weights.items():
            if not isinstance(name, str):
                fail("reward_weights", f"keys must be reward names (str), found {name!r}")
            if not math.isfinite(float(w)):
                fail("reward_weights", f"weight of {name!r} must be finite")
        if not self.allowed_labels or not all(isinstance(l, str) and l for l in self.allowed_labels):
            fail("allowed_labels", "must be a non-empty sequence of non-empty strings")

    def replace(self, **changes) -> "GRPOConfig":
        return dataclasses.replace(self, **changes)
