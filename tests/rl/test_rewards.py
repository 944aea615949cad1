"""Rewards checked against hand-written rules; also GRPOConfig validation and its link to the registries."""

import numpy as np
import pytest

from rl import advantages as adv_mod
from rl import loss as loss_mod
from rl import rewards
from rl.config import ADVANTAGE_SCALES, LOSS_AGGREGATIONS, GRPOConfig

# A pool mixing clean answers, whitespace variants and near misses.
POOL = ["1", "0", " 1", "0\n", "\t1 \n", "10", "01", "1.", "yes", "", " ", "2", "0 0", "One", "I think 1"]


def _ref_format(text, allowed):
    # Strip by hand: drop leading/trailing characters that are whitespace.
    i, j = 0, len(text)
    while i < j and text[i].isspace():
        i += 1
    while j > i and text[j - 1].isspace():
        j -= 1
    core = text[i:j]
    return 1.0 if any(core == a for a in allowed) else 0.0


def _ref_correct(text, label):
    return 1.0 if text.split() == [label] else 0.0


@pytest.mark.parametrize("text", POOL)
def test_format_and_correctness_single(text):
    fmt = rewards.get_reward("format")
    cor = rewards.get_reward("correctness")
    assert fmt(text, "1") == _ref_format(text, ("0", "1"))
    for label in ("0", "1"):
        assert cor(text, label) == _ref_correct(text, label)


def test_format_with_custom_allowed_labels():
    fmt = rewards.get_reward("format", allowed_labels=("yes", "no"))
    assert fmt(" yes\n", "no") == 1.0
    assert fmt("1", "1") == 0.0
    assert fmt("no", "yes") == 1.0  # format ignores correctness


def test_combined_rewards_random_against_loop():
    rng = np.random.default_rng(0)
    n = 64
    completions = [POOL[i] for i in rng.integers(0, len(POOL), size=n)]
    labels = [("0", "1")[i] for i in rng.integers(0, 2, size=n)]
    weights = {"format": float(rng.uniform(0.1, 2)), "correctness": float(rng.uniform(0.1, 2))}
    total, per = rewards.combined_rewards(completions, labels, weights)
    assert total.shape == (n,) and total.dtype == np.float32
    assert set(per) == {"format", "correctness"}
    for k in range(n):
        f = _ref_format(completions[k], ("0", "1"))
        c = _ref_correct(completions[k], labels[k])
        assert per["format"][k] == f
        assert per["correctness"][k] == c
        np.testing.assert_allclose(total[k], weights["format"] * f + weights["correctness"] * c, rtol=1e-6)
    # Both outcomes of each reward occur, so the check above is not vacuous.
    assert 0 < per["format"].sum() < n and 0 < per["correctness"].sum() < n


def test_combined_rewards_uses_allowed_labels():
    total, per = rewards.combined_rewards(["yes", "1"], ["yes", "1"], {"format": 1.0}, allowed_labels=("yes", "no"))
    np.testing.assert_array_equal(per["format"], [1.0, 0.0])
    np.testing.assert_array_equal(total, [1.0, 0.0])


def test_unknown_reward_lists_registered_names():
    with pytest.raises(KeyError) as info:
        rewards.combined_rewards(["1"], ["1"], {"formatt": 1.0})
    msg = str(info.value)
    assert "formatt" in msg and "format" in msg and "correctness" in msg


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="length"):
        rewards.combined_rewards(["1", "0"], ["1"], {"format": 1.0})


def test_register_custom_reward_and_duplicate_guard():
    @rewards.register_reward("_test_len")
    def _len_reward(completion_text, label):
        return float(len(completion_text.strip()))

    try:
        total, per = rewards.combined_rewards(["1", " 10 "], ["1", "0"], {"_test_len": 0.5, "correctness": 1.0})
        np.testing.assert_allclose(per["_test_len"], [1.0, 2.0])
        np.testing.assert_allclose(total, [0.5 * 1 + 1.0, 0.5 * 2 + 0.0])
        with pytest.raises(ValueError, match="already registered"):
            rewards.register_reward("_test_len")(lambda c, l: 0.0)
    finally:
        rewards._REWARDS.pop("_test_len", None)


# --- GRPOConfig -------------------------------------------------------------


def test_config_defaults_match_design_and_registries():
    cfg = GRPOConfig()
    assert cfg.group_size == 8 and cfg.beta == 0.04 and cfg.epsilon_low == 0.2 and cfg.epsilon_high == 0.2
    assert cfg.updates_per_rollout == 1 and cfg.std_ddof == 1 and cfg.advantage_eps == 1e-4
    assert cfg.top_k == 0 and cfg.top_p == 1.0 and cfg.temperature == 1.0 and cfg.max_completion_tokens == 4
    assert cfg.reward_weights == {"format": 1.0, "correctness": 1.0}
    assert cfg.allowed_labels == ("0", "1")
    # Every name the config accepts must be resolvable by the function registries.
    assert set(LOSS_AGGREGATIONS) == set(loss_mod.registered_loss_aggregations())
    assert set(ADVANTAGE_SCALES) == set(adv_mod.registered_advantage_scales())
    assert set(cfg.reward_weights) <= set(rewards.registered_rewards())


def test_config_default_reward_weights_feed_combined_rewards():
    cfg = GRPOConfig()
    total, _ = rewards.combined_rewards(["1", "0", "x"], ["1", "1", "1"], cfg.reward_weights,
                                        allowed_labels=cfg.allowed_labels)
    np.testing.assert_array_equal(total, [2.0, 1.0, 0.0])


@pytest.mark.parametrize(
    "field, value",
    [
        ("group_size", 1),
        ("beta", -0.1),
        ("loss_aggregation", "mean"),
        ("advantage_scale", "global"),
        ("epsilon_low", 1.0),
        ("epsilon_high", -0.1),
        ("temperature", 0.0),
        ("top_p", 0.0),
        ("top_k", -1),
        ("max_completion_tokens", 0),
        ("std_ddof", 8),
        ("advantage_eps", -1e-4),
        ("updates_per_rollout", 0),
        ("reward_weights", {}),
        ("allowed_labels", ()),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"GRPOConfig.{field}"):
        GRPOConfig(**{field: value})


def test_config_is_frozen_and_replace_revalidates():
    cfg = GRPOConfig()
    with pytest.raises(Exception):
        cfg.beta = 0.0  # type: ignore[misc]
    assert cfg.replace(loss_aggregation="dr_grpo").loss_aggregation == "dr_grpo"
    with pytest.raises(ValueError, match="GRPOConfig.beta"):
        cfg.replace(beta=-1.0)


def test_config_is_hashable_for_use_as_a_static_jit_argument():
    a, b = GRPOConfig(), GRPOConfig(reward_weights={"format": 1.0, "correctness": 1.0})
    assert a == b and hash(a) == hash(b)
    assert GRPOConfig(reward_weights={"correctness": 1.0}) != a
