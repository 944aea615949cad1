"""group_advantages against a NumPy loop transcription of the formula."""

import math

import jax
import numpy as np
import pytest

from rl.advantages import group_advantages, registered_advantage_scales


def _mean(xs):
    total = 0.0
    for x in xs:
        total += x
    return total / len(xs)


def _std(xs, ddof):
    m = _mean(xs)
    ss = 0.0
    for x in xs:
        ss += (x - m) ** 2
    return math.sqrt(ss / (len(xs) - ddof))


def _ref(rewards_flat, g, scale, ddof, eps):
    r = [float(x) for x in rewards_flat]
    out = []
    batch_std = _std(r, ddof)
    for start in range(0, len(r), g):
        grp = r[start:start + g]
        m = _mean(grp)
        if scale == "group":
            denom = _std(grp, ddof) + eps
        elif scale == "batch":
            denom = batch_std + eps
        else:
            denom = 1.0
        equal = all(x == grp[0] for x in grp)
        for x in grp:
            out.append(0.0 if equal else (x - m) / denom)
    return np.array(out)


def _random_rewards(rng, b, g):
    # Realistic discrete rewards (format + correctness in {0, 1, 2}) plus a
    # continuous part so groups rarely tie.
    return rng.integers(0, 3, size=(b, g)).astype(np.float32) + rng.normal(0, 0.3, size=(b, g)).astype(np.float32)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("ddof", [0, 1])
def test_matches_loop_reference(scale, ddof):
    rng = np.random.default_rng(1)
    b, g, eps = 5, 8, 1e-4
    r = _random_rewards(rng, b, g)
    expected = _ref(r.reshape(-1), g, scale, ddof, eps)
    for inp in (r, r.reshape(-1)):  # [B, G] and flat [B*G] inputs
        got = np.asarray(group_advantages(inp, g, scale=scale, ddof=ddof, eps=eps))
        assert got.shape == (b * g,)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ddof", [0, 1])
def test_zero_mean_unit_std_per_group(ddof):
    rng = np.random.default_rng(2)
    b, g = 6, 8
    r = _random_rewards(rng, b, g)
    adv = np.asarray(group_advantages(r, g, scale="group", ddof=ddof, eps=0.0)).reshape(b, g)
    for row in adv:
        assert abs(_mean(list(row))) < 1e-5
        assert abs(_std(list(row), ddof) - 1.0) < 1e-5
    # With the default eps the std is shrunk by std / (std + eps), i.e. barely.
    adv_eps = np.asarray(group_advantages(r, g, scale="group", ddof=ddof, eps=1e-4)).reshape(b, g)
    for row_r, row in zip(r, adv_eps):
        s = _std(list(row_r.astype(np.float64)), ddof)
        assert abs(_std(list(row), ddof) - s / (s + 1e-4)) < 1e-5


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_equal_rewards_in_a_group_give_exact_zero(scale):
    g = 8
    # Values whose float32 mean over 8 copies is not exactly the value itself.
    r = np.array(
        [[0.1] * g, [1.0 / 3.0] * g, [0.0, 1, 0, 1, 1, 0, 2, 0], [2.0] * g], dtype=np.float32
    )
    adv = np.asarray(group_advantages(r, g, scale=scale, ddof=1, eps=1e-4)).reshape(4, g)
    assert np.isfinite(adv).all()
    for i in (0, 1, 3):
        assert (adv[i] == 0.0).all()
    assert np.abs(adv[2]).min() > 0.1
    np.testing.assert_allclose(adv[2], _ref(r.reshape(-1), g, scale, 1, 1e-4)[2 * g:3 * g], rtol=1e-5)


def test_all_equal_batch_is_zero_and_finite_even_without_eps():
    r = np.full((3, 4), 0.7, np.float32)
    for scale in ("group", "batch", "none"):
        adv = np.asarray(group_advantages(r, 4, scale=scale, ddof=1, eps=0.0))
        assert (adv == 0.0).all()


def test_jit_matches_eager():
    rng = np.random.default_rng(3)
    r = _random_rewards(rng, 4, 8).reshape(-1)
    fn = jax.jit(group_advantages, static_argnames=("group_size", "scale", "ddof"))
    for scale in registered_advantage_scales():
        np.testing.assert_allclose(
            np.asarray(fn(r, group_size=8, scale=scale, ddof=1, eps=1e-4)),
            np.asarray(group_advantages(r, 8, scale=scale, ddof=1, eps=1e-4)),
            rtol=1e-6, atol=1e-6,
        )


def test_errors():
    r = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(r, 4)
    with pytest.raises(KeyError, match="registered"):
        group_advantages(r, 5, scale="global")
    with pytest.raises(ValueError, match="ddof"):
        group_advantages(r, 5, ddof=5)
