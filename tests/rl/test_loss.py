"""grpo_loss_terms against a per-token NumPy loop transcription, values and gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl.loss import grpo_loss_terms, reduce_sums

AGGS = ["grpo", "bnpo", "dr_grpo"]
EPS_LO, EPS_HI = 0.2, 0.28  # asymmetric so the two clip sides are told apart


def _ref_loss(logp, old, ref, adv, mask, eps_lo, eps_hi, beta, agg, tmax):
    """Returns (loss, d loss / d logp [N, T], metrics means) by explicit loops."""
    n, t = logp.shape
    tok_loss = np.zeros((n, t))
    tok_grad = np.zeros((n, t))
    sums = dict(kl=0.0, ratio=0.0, clip_low=0.0, clip_high=0.0, clip_region=0.0)
    n_tok = 0.0
    for i in range(n):
        a = float(adv[i])
        for j in range(t):
            if not mask[i, j]:
                continue
            ratio = math.exp(logp[i, j] - old[i, j])
            clipped = min(max(ratio, 1 - eps_lo), 1 + eps_hi)
            pg = -min(ratio * a, clipped * a)
            d = ref[i, j] - logp[i, j]
            k3 = math.exp(d) - d - 1
            tok_loss[i, j] = pg + beta * k3
            cut_low = ratio < 1 - eps_lo and a < 0
            cut_high = ratio > 1 + eps_hi and a > 0
            # Unclipped: d(-ratio*a)/dlogp = -ratio*a; clipped side is constant.
            g_pg = 0.0 if (cut_low or cut_high) else -ratio * a
            tok_grad[i, j] = g_pg + beta * (1 - math.exp(d))
            sums["kl"] += k3
            sums["ratio"] += ratio
            sums["clip_low"] += cut_low
            sums["clip_high"] += cut_high
            sums["clip_region"] += cut_low or cut_high
            n_tok += 1
    weight = np.zeros((n, t))
    for i in range(n):
        len_i = sum(1 for j in range(t) if mask[i, j])
        for j in range(t):
            if not mask[i, j]:
                continue
            if agg == "grpo":
                weight[i, j] = 1.0 / len_i / n
            elif agg == "bnpo":
                weight[i, j] = 1.0 / n_tok
            else:
                weight[i, j] = 1.0 / (n * tmax)
    loss = float((tok_loss * weight).sum())
    metrics = {k: v / max(n_tok, 1) for k, v in sums.items()}
    return loss, tok_grad * weight, metrics


# One [N, T] = [8, 5] shape throughout (micro-batches: [4, 5]) so the eager
# primitive cache is reused across tests.
def _inputs(rng, n=8, t=5, spread=0.5):
    logp = np.log(rng.uniform(0.05, 1.0, size=(n, t))).astype(np.float32)
    old = (logp + rng.normal(0, spread, size=(n, t))).astype(np.float32)
    ref = (logp + rng.normal(0, spread, size=(n, t))).astype(np.float32)
    adv = rng.normal(0, 1, size=n).astype(np.float32)
    lengths = rng.integers(1, t + 1, size=n)
    lengths[2] = 0  # an empty completion
    lengths[0] = t
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.float32)
    return logp, old, ref, adv, mask


def _loss_fn(agg, beta, tmax, eps_lo=EPS_LO, eps_hi=EPS_HI, jit=False):
    # Eager by default: on CPU the per-primitive cache is shared across tests,
    # which is cheaper than a fresh compile per test; test_jit_matches_eager covers jit.
    def f(logp, old, ref, adv, mask):
        s, d, m = grpo_loss_terms(
            logp, old, ref, adv, mask, epsilon_low=eps_lo, epsilon_high=eps_hi,
            beta=beta, aggregation=agg, max_completion_tokens=tmax,
        )
        return reduce_sums(s, d), (s, d, m)

    return jax.jit(f) if jit else f


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_value_gradient_metrics_match_loop(agg, beta):
    rng = np.random.default_rng(10)
    logp, old, ref, adv, mask = _inputs(rng)
    tmax = 6  # larger than T: dr_grpo divides by the budget, not the padded width
    exp_loss, exp_grad, exp_metrics = _ref_loss(logp, old, ref, adv, mask, EPS_LO, EPS_HI, beta, agg, tmax)
    f = _loss_fn(agg, beta, tmax)
    (loss, (s, d, metrics)), grad = jax.value_and_grad(f, has_aux=True)(logp, old, ref, adv, mask)
    np.testing.assert_allclose(float(loss), exp_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), exp_grad, rtol=1e-4, atol=1e-6)
    expected_den = {"grpo": 8, "bnpo": mask.sum(), "dr_grpo": 8 * tmax}[agg]
    assert float(d) == expected_den
    for k, v in exp_metrics.items():
        ms, md = metrics[k]
        np.testing.assert_allclose(float(ms) / float(md), v, rtol=1e-5, atol=1e-6)
    # The random inputs exercise both clip sides (otherwise the test is weaker than it claims).
    assert exp_metrics["clip_low"] > 0 and exp_metrics["clip_high"] > 0


@pytest.mark.parametrize("agg", AGGS)
def test_gradient_is_zero_exactly_where_clipped(agg):
    # Ratios on both sides of [1 - 0.2, 1 + 0.28]; even rows A > 0, odd rows A < 0.
    ratios = np.array([0.5, 0.9, 1.0, 1.1, 1.5], np.float32)
    n, t = 8, len(ratios)
    logp = np.log(np.full((n, t), 0.4, np.float32))
    old = (logp - np.log(ratios)[None, :]).astype(np.float32)
    adv = np.array([1.3, -0.8, 0.5, -2.0, 0.1, -0.3, 1.0, -1.0], np.float32)
    mask = np.ones((n, t), np.float32)
    f = _loss_fn(agg, beta=0.0, tmax=t)
    grad = np.asarray(jax.grad(lambda lp: f(lp, old, logp, adv, mask)[0])(logp))
    expected_cut = np.stack([ratios > 1 + EPS_HI if a > 0 else ratios < 1 - EPS_LO for a in adv])
    assert expected_cut[0].any() and expected_cut[1].any()
    assert (grad[expected_cut] == 0.0).all()
    assert (np.abs(grad[~expected_cut]) > 1e-4).all()
    # The "wrong" side (ratio low with A > 0, ratio high with A < 0) is not cut.
    assert grad[0, 0] != 0.0 and grad[1, -1] != 0.0
    _, (_, _, metrics) = f(logp, old, logp, adv, mask)
    assert float(metrics["clip_high"][0]) == expected_cut[0::2].sum()
    assert float(metrics["clip_low"][0]) == expected_cut[1::2].sum()
    assert float(metrics["clip_region"][0]) == expected_cut.sum()


@pytest.mark.parametrize("agg", AGGS)
def test_kl_exactly_zero_when_policy_equals_reference(agg):
    rng = np.random.default_rng(11)
    logp, old, _, adv, mask = _inputs(rng)
    with_kl = _loss_fn(agg, beta=0.04, tmax=5)(logp, old, logp, adv, mask)
    without = _loss_fn(agg, beta=0.0, tmax=5)(logp, old, logp, adv, mask)
    assert float(with_kl[1][2]["kl"][0]) == 0.0
    assert float(with_kl[0]) == float(without[0])


@pytest.mark.parametrize("agg", AGGS)
def test_on_policy_single_update(agg):
    # updates_per_rollout = 1: old_logp is the same numbers as logp, ratio == 1.
    rng = np.random.default_rng(12)
    logp, _, ref, adv, mask = _inputs(rng)
    f = _loss_fn(agg, beta=0.0, tmax=5)
    grad = np.asarray(jax.grad(lambda lp: f(lp, logp, ref, adv, mask)[0])(logp))
    _, (_, _, m) = f(logp, logp, ref, adv, mask)
    assert float(m["ratio"][0]) == float(m["ratio"][1])  # every ratio is exactly 1
    _, exp_grad, _ = _ref_loss(logp, logp, ref, adv, mask, EPS_LO, EPS_HI, 0.0, agg, 5)
    np.testing.assert_allclose(grad, exp_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("agg", AGGS)
def test_empty_rows_and_garbage_padding_stay_finite(agg):
    rng = np.random.default_rng(13)
    logp, old, ref, adv, mask = _inputs(rng)
    # Padding positions hold -inf / huge log-probs, as an unmasked gather might.
    logp = np.where(mask > 0, logp, -np.inf).astype(np.float32)
    old = np.where(mask > 0, old, 1e30).astype(np.float32)
    ref = np.where(mask > 0, ref, -np.inf).astype(np.float32)
    f = _loss_fn(agg, beta=0.04, tmax=5)
    (loss, (_, _, metrics)), grad = jax.value_and_grad(f, has_aux=True)(logp, old, ref, adv, mask)
    assert np.isfinite(float(loss))
    assert np.isfinite(np.asarray(grad)).all()
    assert (np.asarray(grad)[mask == 0] == 0.0).all()
    clean = lambda x: np.where(mask > 0, x, 0.0)
    exp_loss, _, _ = _ref_loss(clean(logp), clean(old), clean(ref), adv, mask, EPS_LO, EPS_HI, 0.04, agg, 5)
    np.testing.assert_allclose(float(loss), exp_loss, rtol=1e-5, atol=1e-6)
    for s, d in metrics.values():
        assert np.isfinite(float(s)) and np.isfinite(float(d))


def test_all_masked_batch_gives_zero_not_nan():
    z = np.zeros((8, 5), np.float32)
    for agg in AGGS:
        loss, (s, d, _) = _loss_fn(agg, beta=0.04, tmax=5)(z, z, z, np.ones(8, np.float32), z)
        assert float(loss) == 0.0 and float(s) == 0.0


@pytest.mark.parametrize("agg", AGGS)
def test_micro_batch_accumulation_equals_full_batch(agg):
    rng = np.random.default_rng(14)
    logp, old, ref, adv, mask = _inputs(rng)
    tmax = 5

    def terms(lp, o, r, a, m):
        return grpo_loss_terms(lp, o, r, a, m, epsilon_low=EPS_LO, epsilon_high=EPS_HI, beta=0.04,
                               aggregation=agg, max_completion_tokens=tmax)

    s_full, d_full, _ = terms(logp, old, ref, adv, mask)
    parts = [slice(0, 4), slice(4, 8)]  # halves with different token counts
    assert mask[parts[0]].sum() != mask[parts[1]].sum()
    outs = [terms(logp[p], old[p], ref[p], adv[p], mask[p]) for p in parts]
    s_acc = sum(float(o[0]) for o in outs)
    d_acc = sum(float(o[1]) for o in outs)
    np.testing.assert_allclose(s_acc / d_acc, float(s_full) / float(d_full), rtol=1e-6)
    assert d_acc == float(d_full)

    # Gradient accumulation: each micro-batch's sum gradient over the total denominator.
    g_full = jax.grad(lambda lp: terms(lp, old, ref, adv, mask)[0] / d_full)(logp)
    g_acc = np.zeros_like(logp)
    for p in parts:
        g_acc[p] = np.asarray(jax.grad(lambda lp: terms(lp, old[p], ref[p], adv[p], mask[p])[0] / d_acc)(logp[p]))
    np.testing.assert_allclose(g_acc, np.asarray(g_full), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("agg", AGGS)
def test_jit_matches_eager(agg):
    rng = np.random.default_rng(15)
    logp, old, ref, adv, mask = _inputs(rng)
    f = _loss_fn(agg, beta=0.04, tmax=5, jit=False)
    eager = f(logp, old, ref, adv, mask)
    jitted = jax.jit(f)(logp, old, ref, adv, mask)
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_bool_mask_equals_float_mask():
    rng = np.random.default_rng(16)
    logp, old, ref, adv, mask = _inputs(rng)
    f = _loss_fn("grpo", beta=0.04, tmax=5)
    assert float(f(logp, old, ref, adv, mask)[0]) == float(f(logp, old, ref, adv, mask.astype(bool))[0])


def test_errors():
    z = jnp.zeros((8, 5))
    a = jnp.zeros(8)
    kw = dict(epsilon_low=0.2, epsilon_high=0.2, max_completion_tokens=5)
    with pytest.raises(KeyError, match="registered"):
        grpo_loss_terms(z, z, z, a, z, beta=0.0, aggregation="mean", **kw)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss_terms(z, z, None, a, z, beta=0.04, aggregation="grpo", **kw)
    s, d, m = grpo_loss_terms(z, z, None, a, jnp.ones((8, 5)), beta=0.0, aggregation="grpo", **kw)
    assert float(m["kl"][0]) == 0.0
