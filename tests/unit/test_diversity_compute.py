"""The diversity planner's fitting and prediction on synthetic error surfaces."""

import numpy as np
import pytest
from transferscope.compute import diversity as dv

TRUE = dict(a=0.6, p=0.5, b=0.9, q=0.5, c=0.08)  # p = q: the best ratio is the same for any N


def _surface(K, n, theta=TRUE):
    return theta["a"] * K ** -theta["p"] + theta["b"] * n ** -theta["q"] + theta["c"]


def _sweep(budgets, seeds=3, noise=0.004, theta=TRUE, seed=0):
    rng = np.random.default_rng(seed)
    K, n, err = [], [], []
    for N in budgets:
        for k in dv.log_grid(N, max_classes=500, max_per_class=500, num_points=6):
            for _ in range(seeds):
                K.append(k)
                n.append(N / k)
                err.append(_surface(k, N / k, theta) + rng.normal(0, noise))
    return np.array(K), np.array(n), np.array(err)


def _true_best_k(N, theta=TRUE):
    a, p, b, q = theta["a"], theta["p"], theta["b"], theta["q"]
    return (p * a * N**q / (q * b)) ** (1 / (p + q))


def test_fit_recovers_the_optimum_and_predicts_a_larger_budget():
    K, n, err = _sweep([400, 1600])
    fit = dv.fit_power_law(K, n, err, num_bootstrap=50)
    assert fit.converged, fit.message
    for N in (400, 1600, 25_600):  # 25,600: 16x the largest budget fitted
        assert fit.best_classes(N) == pytest.approx(_true_best_k(N), rel=0.25)
    lo, hi = fit.interval(lambda t: fit.best_classes(25_600, t))
    assert lo < _true_best_k(25_600) < hi
    # with p = q the best ratio K/n is the same at every budget
    assert fit.best_ratio(400) == pytest.approx(fit.best_ratio(25_600), rel=0.3)


def test_parabola_optimum_per_budget():
    K, n, err = _sweep([900], seeds=4, noise=0.002)
    k_star, interior = dv.parabola_optimum(K, err)
    assert interior and k_star == pytest.approx(_true_best_k(900), rel=0.3)
    lo, hi = dv.bootstrap_parabola(K, err, num_bootstrap=50)
    assert lo <= k_star <= hi


def test_grid_limits_and_bad_input():
    assert dv.log_grid(330, max_classes=66, max_per_class=80, num_points=5)[0] == 5
    assert dv.log_grid(330, max_classes=66, max_per_class=80, num_points=5)[-1] == 66
    with pytest.raises(ValueError, match="does not fit the data"):
        dv.log_grid(10_000, max_classes=66, max_per_class=80, num_points=5)
    with pytest.raises(ValueError, match="at least 3 distinct points"):
        dv.parabola_optimum([4, 4, 8], [0.3, 0.31, 0.2])
    with pytest.raises(ValueError, match="at least 5"):
        dv.fit_power_law([1, 2], [1, 2], [0.1, 0.2])


def test_a_surface_without_an_optimum_is_reported_not_faked():
    # error does not depend on K at all: no interior optimum in K
    flat_in_k = dict(TRUE, a=0.0)
    K, n, err = _sweep([400, 1600], theta=flat_in_k, noise=0.0)
    fit = dv.fit_power_law(K, n, err, num_bootstrap=5)
    assert not fit.converged and "no interior optimum" in fit.message
    k_star, interior = dv.parabola_optimum(K[K * n == 400], err[K * n == 400])
    assert not interior


def test_budgets_default_and_refuse_what_cannot_fit():
    sizes = np.array([40] * 10)
    assert dv.check_budgets(None, None, sizes) == ([25, 50], 100)
    assert dv.check_budgets([50, 20], 100, sizes) == ([20, 50], 100)
    for budgets, full, message in (
        ([20, 20], 100, "two different small budgets"),
        ([20, 100], 100, "must lie below the full budget"),
        ([20, 50], 401, "exceeds the 400 pretraining samples"),
    ):
        with pytest.raises(ValueError, match=message):
            dv.check_budgets(budgets, full, sizes)


def test_only_the_class_counts_the_sizes_allow_are_swept():
    sizes = np.array([100] * 4 + [20] * 4 + [8] * 8)
    grids, dropped = dv.feasible_grids([100], sizes, 5)
    assert grids[100] == [8, 13, 16] and dropped[100] == [10, 11]
    for K in grids[100]:  # K classes hold 100 // K samples each
        assert (sizes >= 100 // K).sum() >= K
    for K in dropped[100]:
        assert (sizes >= 100 // K).sum() < K
    with pytest.raises(ValueError, match="feasible points"):
        dv.feasible_grids([120], np.array([100] * 4 + [20] * 4 + [8] * 8), 5)
    cells = dv.sweep_cells(grids, 2, lambda N: 3)
    assert len(cells) == 2 * 3
    assert all(c["per_class"] == 100 // c["classes"] and c["epochs"] == 3 for c in cells)


def test_the_plan_moves_k_until_enough_classes_hold_its_samples():
    sizes = np.array([50, 50, 50, 10, 10, 10])
    assert dv.feasible_plan(3.2, 120, sizes) == (3, 40, [3, 4, 5], None)
    k, n, excluded, note = dv.feasible_plan(2, 120, sizes)  # 60 each: none has them
    assert (k, n) == (3, 40) and "K*=2 needs 2 classes with 60 samples" in note
    with pytest.raises(ValueError, match="no K fits budget"):
        dv.feasible_plan(6, 400, sizes)
    # up finds none: down (this case looped forever before)
    two_large = np.array([100, 100, 5, 5, 5, 5])
    k, n, _, note = dv.feasible_plan(4, 200, two_large)
    assert (k, n) == (2, 100) and note.endswith("using K=2")
    # most helpful first among the eligible; a seeded order otherwise
    influence = np.array([0.1, 0.3, -0.2, 0.9, 0.0, 0.0])
    assert dv.plan_classes(sizes, 40, 2, influence) == [1, 0]
    random = dv.plan_classes(sizes, 40, 3, None, seed=1)
    assert sorted(random) == [0, 1, 2] and random == dv.plan_classes(sizes, 40, 3, None, seed=1)


def test_the_full_budget_check_has_three_arms_and_reports_each():
    cells = dv.check_cells(100, 4, 25, [7, 8], 10, 2, 5)
    assert [c["arm"] for c in cells] == ["predicted_K"] * 2 + ["all_classes"] * 2 + ["plan"] * 2
    assert [c["per_class"] for c in cells] == [25, 25, 10, 10, 25, 25]
    assert cells[-1]["sample_rows"] == [7, 8] and "sample_rows" not in cells[0]
    sweep = [
        {"budget": 100, "classes": K, "arm": "sweep", "error": e}
        for K, e in ((4, 0.3), (4, 0.5), (10, 0.2))
    ]
    errors = {"predicted_K": 0.4, "all_classes": 0.3, "plan": 0.1}
    table = sweep + [dict(c, error=errors[c["arm"]]) for c in cells]
    per_budget = {"100": {"sweep_best_K": 9.0, "sweep_best_K_ci95": [5.0, 12.0]}}
    v = dv.verification_summary(table, per_budget, 100, 10)
    assert v["measured_best_grid_K"] == 10 and v["accuracy_at_best_grid_K"] == pytest.approx(0.8)
    assert v["accuracy_plan"] == pytest.approx(0.9)
    assert v["accuracy_at_predicted_K"] == pytest.approx(0.6)
    assert v["measured_best_K"] == 9.0 and v["all_classes_K"] == 10


def _verdict(theta, budgets, noise=0.004):
    K, n, err = _sweep(budgets, seeds=4, noise=noise, theta=theta)
    fit = dv.fit_power_law(K, n, err, num_bootstrap=100)
    cells = [
        {"budget": int(round(k * m)), "classes": int(k), "error": float(e)}
        for k, m, e in zip(K, n, err)
    ]
    grids = {N: sorted({c["classes"] for c in cells if c["budget"] == N}) for N in budgets}
    per_budget = dv.budget_summaries(cells, grids, {N: [] for N in budgets}, fit, seed=0)
    return dv.invariance_verdict(fit, per_budget, budgets)


def test_equal_exponents_are_called_invariant_and_unequal_ones_not():
    budgets = [200, 400, 800, 1600, 3200]  # a 16x range
    same = _verdict(TRUE, budgets)
    assert same["budget_span"] == 16 and same["fit_verdict"] == "invariant", same
    assert abs(same["p_minus_q"]) < 0.1
    # the per-budget parabolas in log K are biased by the curve's shape: reported only
    assert isinstance(same["sweep_ratios_agree"], bool)
    assert set(same["sweep_ratio_ci95_by_budget"]) == {str(N) for N in budgets}
    # p > q: more budget favours more samples per class, the best ratio falls with N
    steep = _verdict(dict(TRUE, p=1.2, q=0.3), budgets)
    assert steep["fit_verdict"] == "not invariant", steep
    assert steep["p_minus_q_ci95"][0] > 0 and steep["ratio_change_over_span"] < 0.5


def test_a_fit_that_did_not_converge_leaves_the_invariance_undecided():
    budgets = [200, 400, 800]
    flat = dict(TRUE, a=0.0)  # no trade-off in K: no optimum
    verdict = _verdict(flat, budgets)
    assert verdict["fit_verdict"] == "undecided" and "p_minus_q" not in verdict


def test_a_bootstrap_draw_without_a_finite_optimum_is_dropped_not_raised():
    # p + q ~ 1e-10: K* = (...)^(1 / (p + q)) overflows
    degenerate = [0.33, 0.041, 6.3e-11, 0.01, 3.9e-16]
    usual = [0.26, 0.28, 0.17, 0.29, 2.2]
    fit = dv.PowerLawFit(*usual, 0.0, True, "", np.array([degenerate, usual, usual]))
    assert fit.best_ratio(12, degenerate) == float("inf")
    lo, hi = fit.interval(lambda t: fit.best_ratio(12, t))
    assert lo == pytest.approx(fit.best_ratio(12)) and hi == pytest.approx(lo)


def test_a_fit_whose_bootstrap_cannot_place_the_best_k_falls_back_to_the_sweep():
    usual = [0.26, 0.28, 0.17, 0.29, 2.2]
    # draws that agree place K* within a narrow interval: the fit is used
    tight = dv.PowerLawFit(*usual, 0.0, True, "", np.array([usual] * 3))
    per_budget = {"200": {"sweep_best_ratio": 0.5}, "400": {"sweep_best_ratio": 0.5}}
    used = dv.predict_full_budget(tight, per_budget, [200, 400], 800)
    assert used["fit_identified"] and used["K_from_fit"] == pytest.approx(tight.best_classes(800))
    # draws whose exponents wander (p from 0.28 to 2.7): K* anywhere, the fit is not used
    wandering = [[0.26, p, 0.17, 0.29, 2.2] for p in (0.28, 0.9, 2.74)]
    loose = dv.PowerLawFit(*usual, 0.0, True, "", np.array(wandering))
    lo, hi = loose.interval(lambda t: loose.best_classes(800, t))
    assert hi / lo > dv.MAX_IDENTIFIED_K_FACTOR
    fallback = dv.predict_full_budget(loose, per_budget, [200, 400], 800)
    assert not fallback["fit_identified"] and fallback["K_from_fit"] is None
    assert "does not identify its exponents" in fallback["fit_message"]
    assert fallback["K_from_pooled_sweep_ratio"] == pytest.approx(20.0)  # sqrt(0.5 * 800)
