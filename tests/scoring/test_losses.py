"""Stage-2 score losses against NumPy loop transcriptions on random inputs."""

import math

import jax
import numpy as np
import pytest

from scoring.losses import (
    ScoreLossConfig,
    combined_score_loss,
    graded_targets,
    listwise_softmax_ce,
    pairwise_logistic,
    pointwise_bce,
    soft_labels_from_teacher,
)


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _ref_bce(scores, targets, mask):
    total, count = 0.0, 0.0
    for s, t, m in zip(scores, targets, mask):
        if m:
            p = _sigmoid(float(s))
            total += -(t * math.log(p) + (1 - t) * math.log(1 - p))
            count += 1
    return total, count


def _ref_listwise(scores, mask, temp):
    total, count = 0.0, 0.0
    for row_s, row_m in zip(scores, mask):
        present = [float(s) / temp for s, m in zip(row_s, row_m) if m]
        if not row_m[0] or len(present) < 2:
            continue
        z = sum(math.exp(x) for x in present)
        total += -math.log(math.exp(float(row_s[0]) / temp) / z)
        count += 1
    return total, count


def _ref_pairwise(scores, labels, mask):
    total, count = 0.0, 0.0
    for row_s, row_y, row_m in zip(scores, labels, mask):
        n = len(row_s)
        for i in range(n):
            for j in range(n):
                if row_m[i] and row_m[j] and row_y[i] > row_y[j]:
                    total += math.log(1 + math.exp(-(float(row_s[i]) - float(row_s[j]))))
                    count += 1
    return total, count


# Tests share the [6, 6] shape where they can so the eager primitive cache is reused.
def _list_batch(rng, b=6, k=5):
    scores = rng.normal(0, 2, size=(b, 1 + k)).astype(np.float32)
    mask = (rng.uniform(size=(b, 1 + k)) < 0.7).astype(np.float32)
    mask[:, 0] = 1
    mask[0, :] = 1           # a full row
    mask[1, 1:] = 0          # a positive with no negatives: not counted
    mask[2, 0] = 0           # an absent positive: not counted
    labels = rng.integers(0, 4, size=(b, 1 + k)).astype(np.float32)
    labels[:, 0] = 3
    return scores, mask, labels


# --- pointwise ---------------------------------------------------------------


def test_pointwise_bce_hard_and_soft_labels():
    rng = np.random.default_rng(0)
    shape = (6, 6)
    n = 36
    s = rng.normal(0, 3, size=shape).astype(np.float32)
    mask = (rng.uniform(size=shape) < 0.8).astype(np.float32)
    hard = rng.integers(0, 2, size=shape).astype(np.float32)
    soft = rng.uniform(size=shape).astype(np.float32)
    for targets in (hard, soft):
        total, count = pointwise_bce(s, targets, mask)
        exp_total, exp_count = _ref_bce(s.reshape(-1), targets.reshape(-1), mask.reshape(-1))
        np.testing.assert_allclose(float(total), exp_total, rtol=1e-5)
        assert float(count) == exp_count
    # Gradient of the mean BCE is (sigmoid(s) - t) / count on present items, 0 elsewhere.
    g = np.asarray(jax.grad(lambda x: pointwise_bce(x, soft, mask)[0])(s)).reshape(-1)
    for i in range(n):
        si, ti, mi = s.reshape(-1)[i], soft.reshape(-1)[i], mask.reshape(-1)[i]
        expected = (_sigmoid(float(si)) - float(ti)) if mi else 0.0
        assert abs(g[i] - expected) < 1e-5


def test_pointwise_bce_is_stable_for_large_scores():
    s = np.array([-200.0, 200.0, -60.0, 60.0], np.float32)
    t = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    total, count = pointwise_bce(s, t)
    # Wrong-side by 200 costs ~200 each; right side by 60 costs ~exp(-60) ~ 0.
    np.testing.assert_allclose(float(total), 400.0, rtol=1e-6)
    assert float(count) == 4
    g = np.asarray(jax.grad(lambda x: pointwise_bce(x, t)[0])(s))
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, [-1.0, 1.0, 0.0, 0.0], atol=1e-6)


def test_soft_labels_from_teacher_and_graded_targets():
    rng = np.random.default_rng(1)
    teacher = rng.normal(0, 4, size=20).astype(np.float32)
    for temp in (0.5, 1.0, 3.0):
        got = np.asarray(soft_labels_from_teacher(teacher, temp))
        for x, y in zip(teacher, got):
            assert abs(y - _sigmoid(float(x) / temp)) < 1e-6
    grades = np.array([-1, 0, 1, 2, 3, 4], np.float32)
    np.testing.assert_allclose(np.asarray(graded_targets(grades, 3)), [0, 0, 1 / 3, 2 / 3, 1, 1], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(graded_targets(np.array([0.0, 1.0]), 1)), [0.0, 1.0])
    with pytest.raises(ValueError):
        soft_labels_from_teacher(teacher, 0.0)


# --- listwise ----------------------------------------------------------------


@pytest.mark.parametrize("temp", [1.0, 0.3])
def test_listwise_matches_loop(temp):
    rng = np.random.default_rng(2)
    scores, mask, _ = _list_batch(rng)
    total, count = listwise_softmax_ce(scores, mask, temp)
    exp_total, exp_count = _ref_listwise(scores, mask, temp)
    np.testing.assert_allclose(float(total), exp_total, rtol=1e-5)
    assert float(count) == exp_count == 4


def test_listwise_masked_negatives_equal_unmasked_subset():
    rng = np.random.default_rng(3)
    scores, mask, _ = _list_batch(rng)
    poisoned = np.where(mask > 0, scores, 1e30).astype(np.float32)  # absent slots hold junk
    total, count = listwise_softmax_ce(poisoned, mask, 0.7)
    sub_total, sub_count = 0.0, 0.0
    for row_s, row_m in zip(scores, mask):
        if not row_m[0]:
            continue
        keep = row_s[row_m > 0][None, :]
        # jit: one small compile per row length beats eager per-primitive compiles.
        t, c = jax.jit(listwise_softmax_ce, static_argnums=2)(keep, np.ones_like(keep), 0.7)
        sub_total += float(t)
        sub_count += float(c)
    np.testing.assert_allclose(float(total), sub_total, rtol=1e-6)
    assert float(count) == sub_count
    g = np.asarray(jax.grad(lambda x: listwise_softmax_ce(x, mask, 0.7)[0])(poisoned))
    assert np.isfinite(g).all()
    assert (g[mask == 0] == 0.0).all()
    # Rows with a positive and negatives: the positive is pushed up, gradients sum to 0.
    for i in (0, 3, 4, 5):
        assert g[i, 0] < 0 and abs(g[i].sum()) < 1e-5


def test_listwise_all_masked_row_is_finite():
    scores = np.zeros((6, 6), np.float32)
    mask = np.zeros((6, 6), np.float32)
    mask[1, :2] = 1  # one row with a positive and one negative; the rest fully absent
    total, count = listwise_softmax_ce(scores, mask)
    np.testing.assert_allclose(float(total), math.log(2.0), rtol=1e-6)
    assert float(count) == 1
    g = np.asarray(jax.grad(lambda x: listwise_softmax_ce(x, mask)[0])(scores))
    assert np.isfinite(g).all() and (g[mask == 0] == 0).all()


# --- pairwise ----------------------------------------------------------------


def test_pairwise_graded_matches_loop():
    rng = np.random.default_rng(4)
    scores, mask, labels = _list_batch(rng)
    total, count = pairwise_logistic(scores, labels, mask)
    exp_total, exp_count = _ref_pairwise(scores, labels, mask)
    np.testing.assert_allclose(float(total), exp_total, rtol=1e-5)
    assert float(count) == exp_count
    # Graded labels give pairs among negatives too, not only positive-vs-negative.
    neg_pairs = sum(
        1 for r in range(len(labels)) for i in range(1, labels.shape[1]) for j in range(1, labels.shape[1])
        if mask[r, i] and mask[r, j] and labels[r, i] > labels[r, j]
    )
    assert neg_pairs > 0
    # No mask means every slot is present.
    t_all, c_all = pairwise_logistic(scores, labels)
    e_all, ec_all = _ref_pairwise(scores, labels, np.ones_like(mask))
    np.testing.assert_allclose(float(t_all), e_all, rtol=1e-5)
    assert float(c_all) == ec_all


def test_pairwise_ties_give_no_pairs():
    scores = np.random.default_rng(8).normal(size=(6, 6)).astype(np.float32)
    labels = np.repeat(np.arange(6, dtype=np.float32)[:, None], 6, axis=1)  # equal within each row
    total, count = pairwise_logistic(scores, labels, np.ones_like(scores))
    assert float(total) == 0.0 and float(count) == 0.0


# --- mix, config, jit --------------------------------------------------------


@pytest.mark.parametrize("mode", ["binary", "graded", "teacher"])
def test_combined_score_loss_is_weighted_mix_of_means(mode):
    rng = np.random.default_rng(5)
    scores, mask, labels = _list_batch(rng)
    teacher = rng.normal(0, 2, size=scores.shape).astype(np.float32)
    cfg = ScoreLossConfig(pointwise_weight=0.5, listwise_weight=1.0, pairwise_weight=0.25,
                          listwise_temperature=0.5, label_mode=mode, max_grade=3, teacher_temperature=2.0)
    loss, metrics = combined_score_loss(scores, labels, mask, cfg, teacher_scores=teacher)
    flat_s, flat_m = scores.reshape(-1), mask.reshape(-1)
    if mode == "binary":
        targets = [1.0 if y > 0 else 0.0 for y in labels.reshape(-1)]
    elif mode == "graded":
        targets = [min(max(y / 3.0, 0.0), 1.0) for y in labels.reshape(-1)]
    else:
        targets = [_sigmoid(float(x) / 2.0) for x in teacher.reshape(-1)]
    p_t, p_c = _ref_bce(flat_s, targets, flat_m)
    l_t, l_c = _ref_listwise(scores, mask, 0.5)
    r_t, r_c = _ref_pairwise(scores, labels, mask)
    expected = 0.5 * p_t / p_c + 1.0 * l_t / l_c + 0.25 * r_t / r_c
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["pairwise_loss"]), r_t / r_c, rtol=1e-5)
    assert float(metrics["listwise_count"]) == l_c


def test_zero_weight_terms_are_skipped():
    rng = np.random.default_rng(6)
    scores, mask, labels = _list_batch(rng)
    loss, metrics = combined_score_loss(scores, labels, mask, ScoreLossConfig())
    assert set(metrics) == {"listwise_loss", "listwise_count", "loss"}
    l_t, l_c = _ref_listwise(scores, mask, 1.0)
    np.testing.assert_allclose(float(loss), l_t / l_c, rtol=1e-5)


def test_jit_matches_eager():
    rng = np.random.default_rng(7)
    scores, mask, labels = _list_batch(rng)
    cfg = ScoreLossConfig(pointwise_weight=1.0, listwise_weight=1.0, pairwise_weight=1.0, label_mode="graded")
    f = lambda s: combined_score_loss(s, labels, mask, cfg)
    eager_loss, eager_m = f(scores)
    jit_loss, jit_m = jax.jit(f)(scores)
    np.testing.assert_allclose(float(jit_loss), float(eager_loss), rtol=1e-6)
    for k in eager_m:
        np.testing.assert_allclose(float(jit_m[k]), float(eager_m[k]), rtol=1e-6)
    g_e = np.asarray(jax.grad(lambda s: f(s)[0])(scores))
    g_j = np.asarray(jax.jit(jax.grad(lambda s: f(s)[0]))(scores))
    np.testing.assert_allclose(g_j, g_e, rtol=1e-5, atol=1e-7)


def test_teacher_mode_needs_teacher_scores():
    scores = np.zeros((1, 2), np.float32)
    with pytest.raises(ValueError, match="teacher_scores"):
        combined_score_loss(scores, scores, scores + 1, ScoreLossConfig(pointwise_weight=1.0, label_mode="teacher"))


@pytest.mark.parametrize(
    "field, value",
    [("pointwise_weight", -1.0), ("listwise_temperature", 0.0), ("label_mode", "soft"),
     ("max_grade", 0), ("teacher_temperature", -1.0)],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"ScoreLossConfig.{field}"):
        ScoreLossConfig(**{field: value})


def test_config_needs_a_positive_weight():
    with pytest.raises(ValueError, match="at least one"):
        ScoreLossConfig(listwise_weight=0.0)
