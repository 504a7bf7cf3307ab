import numpy as np
import pytest
from scipy import stats
from transferscope.compute import (
    aggregate_influence,
    check_design,
    class_influence,
    min_models,
    sample_class_masks,
    split_half_spearman,
    top_k_classes,
)
from transferscope.compute.estimators import split_halves

MASKS = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=bool)
# outputs of 5 models on 2 targets
OUTPUTS = np.array([[0.9, 0.1], [0.5, 0.4], [0.8, 0.3], [0.2, 0.6], [0.7, 0.2]])


def test_influence_matches_hand_computation():
    est = class_influence(MASKS, OUTPUTS)
    # class 0: models 0, 2, 4 in; 1, 3 out
    # target 0: mean(0.9, 0.8, 0.7) - mean(0.5, 0.2) = 0.8 - 0.35 = 0.45
    assert est.influence[0, 0] == pytest.approx(0.45)
    # target 1: mean(0.1, 0.3, 0.2) - mean(0.4, 0.6) = 0.2 - 0.5 = -0.3
    assert est.influence[0, 1] == pytest.approx(-0.3)
    # class 2: models 0, 1, 3 in; 2, 4 out. target 0: mean(.9,.5,.2) - mean(.8,.7)
    assert est.influence[2, 0] == pytest.approx((0.9 + 0.5 + 0.2) / 3 - 0.75)
    # Welch standard error for class 0, target 0
    se = np.sqrt(np.var([0.9, 0.8, 0.7], ddof=1) / 3 + np.var([0.5, 0.2], ddof=1) / 2)
    assert est.stderr[0, 0] == pytest.approx(se)
    assert list(est.n_in) == [3, 2, 3] and list(est.n_out) == [2, 3, 2]


def test_aggregate_is_mean_over_targets_with_welch_interval():
    agg = aggregate_influence(MASKS, OUTPUTS)
    est = class_influence(MASKS, OUTPUTS)
    np.testing.assert_allclose(agg.influence, est.influence.mean(axis=1))
    per_model = OUTPUTS.mean(axis=1)
    a, b = per_model[MASKS[:, 1]], per_model[~MASKS[:, 1]]
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(0.95)
    assert agg.ci_low[1] == pytest.approx(ci.low)
    assert agg.ci_high[1] == pytest.approx(ci.high)


def test_influence_refuses_shape_mismatch_and_non_finite_outputs():
    with pytest.raises(ValueError, match="share M"):
        class_influence(MASKS, OUTPUTS[:4])
    bad = OUTPUTS.copy()
    bad[1, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        class_influence(MASKS, bad)


def test_masks_are_balanced_deterministic_and_complementary():
    m = sample_class_masks(40, 11, alpha=0.5, seed=3)
    assert m.shape == (40, 11)
    assert (m.sum(axis=1) == round(0.5 * 11)).all()
    counts = m.sum(axis=0)
    assert counts.max() - counts.min() <= 1 + 1  # within one of alpha*M (rounding of k)
    np.testing.assert_array_equal(m, sample_class_masks(40, 11, alpha=0.5, seed=3))
    assert not np.array_equal(m, sample_class_masks(40, 11, alpha=0.5, seed=4))
    even = sample_class_masks(10, 8, alpha=0.5, seed=0)
    np.testing.assert_array_equal(even[0::2], ~even[1::2])  # complementary pairs
    m3 = sample_class_masks(30, 10, alpha=0.3, seed=0)
    assert (m3.sum(axis=1) == 3).all() and m3.sum(axis=0).min() >= 8


def test_design_checks():
    with pytest.raises(ValueError, match="at least 2 pretraining classes"):
        sample_class_masks(4, 1)
    with pytest.raises(ValueError, match="alpha"):
        sample_class_masks(4, 5, alpha=1.0)
    with pytest.raises(ValueError, match="too few models"):
        check_design(sample_class_masks(3, 6), [f"c{i}" for i in range(6)])
    check_design(sample_class_masks(min_models(0.5), 6))
    check_design(sample_class_masks(min_models(0.25), 8, alpha=0.25))


def test_top_k_and_split_halves():
    infl = np.array([[0.3, -0.1], [0.1, 0.2], [-0.2, 0.0]])
    pos, neg = top_k_classes(infl, 2)
    assert pos.tolist() == [[0, 1], [1, 2]]
    assert neg.tolist() == [[2, 1], [0, 2]]
    a, b = split_halves(8)
    assert a.tolist() == [0, 1, 4, 5] and b.tolist() == [2, 3, 6, 7]


def test_split_half_spearman_detects_a_real_signal():
    rng = np.random.default_rng(0)
    # the difference of means also carries the other classes' effects
    # (they vary with the subset), so a clean ranking needs many models
    masks = sample_class_masks(800, 10, seed=1)
    effect = np.linspace(-0.1, 0.1, 10)
    outputs = masks @ effect[:, None] + rng.normal(0, 0.01, (800, 5))
    assert split_half_spearman(masks, outputs) > 0.9
    noise = rng.normal(0, 1, (800, 5))
    assert abs(split_half_spearman(masks, noise)) < 0.8
