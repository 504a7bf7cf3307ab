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
