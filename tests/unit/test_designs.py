"""Subset designs and estimators, checked by simulation (no training, no database).

The additive model of the issue that set the defaults: one strong class
(effect -0.10), the others normal with sd 0.01, per-model noise sd 0.03.
"""

import numpy as np
import pytest
from scipy import stats
from transferscope.compute import (
    InfluenceConfig,
    aggregate_influence,
    class_influence,
    design_masks,
    estimate_influence,
    linear_datamodeling_score,
    make_design,
    split_half,
)
from transferscope.compute.estimators import benjamini_hochberg, is_orthogonal
from transferscope.compute.subsets import _construction, hadamard, hadamard_order

STRONG = -0.10


def simulate(masks, rng, num_targets=5, strong=STRONG, noise=0.03, effects=None):
    """Outputs of an additive model; returns ``(outputs (M, T), truth (C,))``.

    The truth is what the design identifies: the effect of adding a class,
    or, where every model sees as many classes (independent, balanced and
    pairs designs), its effect relative to the average other class.
    """
    X = masks.astype(np.float64)
    C = X.shape[1]
    if effects is None:
        effects = rng.normal(0, 0.01, C)
        effects[0] = strong
    per_target = effects[:, None] + rng.normal(0, 0.005, (C, num_targets))
    Y = (
        0.5
        + X @ per_target
        + rng.normal(0, noise, (len(X), 1))
        + rng.normal(0, noise, (len(X), num_targets))
    )
    truth = per_target.mean(axis=1)
    sizes = X.sum(axis=1)
    if (sizes == sizes[0]).all():
        truth = (truth - truth.mean()) * C / (C - 1)
    return Y, truth


def coverage_run(design, num_models, num_classes, reps=300, estimator="auto"):
    covered, z = [], []
    for r in range(reps):
        config = InfluenceConfig(num_models=num_models, design=design, seed=r)
        masks = design_masks(config, num_classes)
        Y, truth = simulate(masks, np.random.default_rng([7, r]))
        agg = aggregate_influence(masks, Y, estimator=estimator)
        covered.append((agg.ci_low <= truth) & (truth <= agg.ci_high))
        z.append((agg.influence - truth) / agg.stderr)
    return float(np.mean(covered)), float(np.std(z)), agg


def test_every_hadamard_construction_is_orthogonal():
    orders = [n for n in range(4, 404, 4) if _construction(n) is not None]
    assert len(orders) > 60  # Sylvester, Paley I and II, and their doublings
    for n in orders:
        H = hadamard(n).astype(np.int64)
        assert set(np.unique(H)) == {-1, 1}
        np.testing.assert_array_equal(H @ H.T, n * np.eye(n, dtype=np.int64))
    assert hadamard_order(69) == 72 and hadamard_order(1001) == 1008


def test_orthogonal_design_is_balanced_orthogonal_folded_and_rounded_to_blocks():
    design = make_design("orthogonal", 128, 68, seed=3)
    m = design.masks
    assert m.shape == (144, 68) and design.block_size == 144
    assert "rounded up to 144" in design.note
    assert (m.sum(axis=0) == 72).all()  # every class in half the models
    together = m.T.astype(int) @ m.astype(int)
    off = together[~np.eye(68, dtype=bool)]
    assert (off == 36).all()  # every two classes together in a quarter
    np.testing.assert_array_equal(m[1::2], ~m[0::2])  # folded over
    assert is_orthogonal(m)
    np.testing.assert_array_equal(m, make_design("orthogonal", 128, 68, seed=3).masks)
    assert not np.array_equal(m, make_design("orthogonal", 128, 68, seed=4).masks)
    two = make_design("orthogonal", 145, 68, seed=3)
    assert two.num_models == 288 and two.groups().max() == 1
    np.testing.assert_array_equal(two.masks[:144], m)  # blocks are independent units
    assert m.any(axis=1).all() and (~m).any(axis=1).all()


def test_fewer_models_than_a_block_fall_back_to_the_balanced_design():
    design = make_design("orthogonal", 64, 200, seed=0)
    assert design.name == "balanced" and design.requested == "orthogonal"
    assert "fewer than one orthogonal block" in design.note and design.num_models == 64
    m = design.masks
    assert (m.sum(axis=1) == 100).all()  # every model half the classes
    assert set(m.sum(axis=0)) == {32}  # every class in half the models
    assert not (m[1::2] == ~m[0::2]).all()  # not complementary pairs


@pytest.mark.parametrize(
    "design, num_models, num_classes",
    [
        ("orthogonal", 80, 38),
        ("orthogonal", 160, 38),
        ("balanced", 64, 38),
        ("independent", 64, 38),
        ("pairs", 64, 38),
        ("orthogonal", 64, 200),  # more classes than models: the balanced fallback
    ],
)
def test_intervals_cover_and_standard_errors_match_the_spread(design, num_models, num_classes):
    coverage, spread, agg = coverage_run(design, num_models, num_classes)
    assert 0.93 <= coverage <= 0.97, (coverage, agg.estimator, agg.se_method)
    assert 0.85 <= spread <= 1.15, (spread, agg.estimator, agg.se_method)


def test_the_old_welch_error_on_complementary_pairs_was_too_small():
    # the estimate is unchanged; only its standard error was wrong
    covered = []
    for r in range(200):
        masks = design_masks(InfluenceConfig(num_models=64, design="pairs", seed=r), 38)
        Y, truth = simulate(masks, np.random.default_rng([7, r]))
        est = class_influence(masks, Y.mean(axis=1, keepdims=True))
        df = len(masks) - 2
        half = stats.t.ppf(0.975, df) * est.stderr[:, 0]
        covered.append(np.abs(est.influence[:, 0] - truth) <= half)
    assert np.mean(covered) < 0.90


def test_a_strong_class_does_not_leak_into_the_others_in_the_default_design():
    masks = design_masks(InfluenceConfig(num_models=144), 68)
    rng = np.random.default_rng(0)
    effects = rng.normal(0, 0.01, 68)
    noise = rng.normal(0, 0.03, (len(masks), 3))
    X = masks.astype(np.float64)
    estimates = []
    for strong in (-0.1, -1.0, 5.0):
        e = effects.copy()
        e[0] = strong
        estimates.append(aggregate_influence(masks, 0.5 + (X @ e)[:, None] + noise).influence)
    # the other classes' estimates do not move at all with the strong class's effect
    np.testing.assert_allclose(estimates[0][1:], estimates[1][1:], atol=1e-10)
    np.testing.assert_allclose(estimates[0][1:], estimates[2][1:], atol=1e-10)
    # co-occurrence with the strong class is the same for every class, so it cannot
    # correlate with anything
    together = (masks[:, 1:] & masks[:, [0]]).sum(axis=0)
    assert together.min() == together.max()


def test_the_regression_removes_the_shadow_in_a_random_design_and_the_paper_does_not():
    r_dm, r_reg = [], []
    for r in range(100):
        masks = design_masks(InfluenceConfig(num_models=200, design="independent", seed=r), 38)
        Y, truth = simulate(masks, np.random.default_rng([9, r]), strong=-0.3)
        together = (masks[:, 1:] & masks[:, [0]]).sum(axis=0)
        for est, out in (("difference_of_means", r_dm), ("regression", r_reg)):
            err = aggregate_influence(masks, Y, estimator=est).influence[1:] - truth[1:]
            out.append(np.corrcoef(err, together)[0, 1])
    assert abs(np.mean(r_reg)) < 0.3
    assert np.mean(r_dm) < -0.5  # the paper's estimator carries the strong class's shadow


def test_the_orthogonal_design_needs_far_fewer_models_than_independent_halves():
    errors = {}
    for design, estimator in (
        ("orthogonal", "auto"),
        ("independent", "difference_of_means"),
        ("independent", "regression"),
    ):
        err = []
        for r in range(200):
            masks = design_masks(InfluenceConfig(num_models=80, design=design, seed=r), 38)
            Y, truth = simulate(masks, np.random.default_rng([11, r]))
            err.append((aggregate_influence(masks, Y, estimator=estimator).influence - truth)[1:])
        errors[design, estimator] = np.std(err)
    orthogonal = errors["orthogonal", "auto"]
    # the paper's design and estimator: measured 5.2x the variance on this model
    assert (errors["independent", "difference_of_means"] / orthogonal) ** 2 > 3
    # the regression on the paper's design recovers part of it (measured 1.9x)
    assert (errors["independent", "regression"] / orthogonal) ** 2 > 1.2


def test_difference_of_means_equals_least_squares_in_an_orthogonal_design():
    masks = make_design("orthogonal", 160, 38, seed=1).masks
    Y, _ = simulate(masks, np.random.default_rng(1), num_targets=7)
    dm = estimate_influence(masks, Y, "difference_of_means")
    ols = estimate_influence(masks, Y, "regression")
    np.testing.assert_allclose(dm.influence, ols.influence, atol=1e-10)
    np.testing.assert_allclose(dm.stderr, ols.stderr, atol=1e-12)
    assert dm.se_method == "residuals" and dm.df == 160 - 39


def test_independent_difference_of_means_is_the_papers_formula():
    config = InfluenceConfig(num_models=50, design="independent", seed=5)
    masks = design_masks(config, 12)
    Y = np.random.default_rng(5).random((50, 9))
    est = estimate_influence(masks, Y, "difference_of_means")
    paper = np.empty((12, 9))
    for c in range(12):
        with_c, without = masks[:, c], ~masks[:, c]
        paper[c] = Y[with_c].sum(axis=0) / with_c.sum() - Y[without].sum(axis=0) / without.sum()
    np.testing.assert_allclose(est.influence, paper, atol=1e-6)


def test_q_values_are_benjamini_hochberg_and_control_false_discoveries():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    # by hand: q_(i) = min_{j >= i} p_(j) * m / j
    m = len(p)
    raw = p * m / np.arange(1, m + 1)
    expected = np.minimum.accumulate(raw[::-1])[::-1]
    np.testing.assert_allclose(benjamini_hochberg(p), expected)
    false_share, power = [], []
    for r in range(100):
        masks = design_masks(InfluenceConfig(num_models=144, seed=r), 68)
        effects = np.zeros(68)
        effects[:6] = -0.02  # six harmful classes, the rest null
        Y, _ = simulate(masks, np.random.default_rng([13, r]), effects=effects)
        agg = aggregate_influence(masks, Y)
        chosen = np.flatnonzero((agg.influence < 0) & (agg.q_value < 0.1))
        false_share.append(np.mean(chosen >= 6) if len(chosen) else 0.0)
        power.append(np.mean(chosen < 6) * len(chosen) / 6 if len(chosen) else 0.0)
    assert np.mean(false_share) <= 0.1
    assert np.mean(power) > 0.5


def test_split_half_z_scores_have_unit_spread_when_the_errors_are_right():
    sds = []
    for r in range(40):
        design = make_design("orthogonal", 160, 38, seed=r)
        Y, _ = simulate(design.masks, np.random.default_rng([17, r]))
        half = split_half(design.masks, Y, design.block_size)
        assert half["halves"] == [80, 80]
        sds.append(half["z_sd"])
    assert 0.85 <= np.mean(sds) <= 1.15


def test_the_datamodeling_score_is_high_for_additive_outputs_and_zero_for_noise():
    rng = np.random.default_rng(3)
    masks = make_design("orthogonal", 160, 38, seed=3).masks
    held = make_design("independent", 32, 38, seed=4).masks
    effects = rng.normal(0, 0.05, 38)
    Y, _ = simulate(masks, rng, effects=effects, noise=0.005)
    Yh, _ = simulate(held, rng, effects=effects, noise=0.005)
    score = linear_datamodeling_score(masks, Y, held, Yh)
    assert score["lds"] > 0.8 and score["num_heldout"] == 32
    noise = linear_datamodeling_score(
        masks, rng.normal(size=Y.shape), held, rng.normal(size=Yh.shape)
    )
    assert abs(noise["lds"]) < 0.2


def test_bad_designs_and_estimators_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="design must be one of"):
        InfluenceConfig(design="latin")
    with pytest.raises(ValueError, match="design must be one of"):
        make_design("latin", 10, 4)
    with pytest.raises(ValueError, match="alpha 0.5"):
        make_design("orthogonal", 100, 10, alpha=0.3)
    with pytest.raises(ValueError, match="estimator must be one of"):
        estimate_influence(np.eye(4, dtype=bool), np.ones((4, 1)), "ridge")
    masks = make_design("balanced", 20, 30, seed=0).masks
    with pytest.raises(ValueError, match="more models than classes"):
        estimate_influence(masks, np.random.default_rng(0).random((20, 2)), "regression")
    with pytest.raises(ValueError, match="holdout_models"):
        InfluenceConfig(holdout_models=2)
    with pytest.raises(
        ValueError,
        match="no whole number of orthogonal blocks fits: 999999 models round up to 1000080",
    ):
        design_masks(InfluenceConfig(num_models=999_999), 68)
    with pytest.raises(ValueError, match="confidence"):
        aggregate_influence(masks, np.ones((20, 1)), confidence=1.5)
