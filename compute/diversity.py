"""The intra-/inter-class diversity trade-off (Zhang et al., NeurIPS 2023).

With a pretraining budget of ``N = K classes x n samples per class``, the
target error depends on both ``K`` and ``n``. Fitting

    err(K, n) = a * K**-p + b * n**-q + c          (monotone in K and in n)

on small budgets gives, for any budget ``N``, the best number of classes

    K*(N) = (p * a * N**q / (q * b)) ** (1 / (p + q)),   n* = N / K*,

and the best ratio ``r* = K* / n* = K*^2 / N``, which does not depend on ``N``
exactly when ``p = q`` (the paper's finding). Each budget's optimum is also
estimated without the model (a parabola in ``log K`` through that budget's
sweep) to test the invariance, and everything carries a bootstrap interval
over the seeds.
"""

import dataclasses
import math

import numpy as np
from scipy import optimize

from .curation import arm_summary, sequential_comparison
from .sequential import StoppingRule


def log_grid(budget, max_classes, max_per_class, num_points, min_per_class=2, min_classes=2):
    """Up to ``num_points`` numbers of classes ``K`` on a log grid for budget ``N``.

    ``K`` runs from the fewest classes the per-class limit allows
    (``N / max_per_class``) to the most the data has (and ``N / min_per_class``).
    Returns a sorted list of distinct integers; raises ValueError naming the
    limit when the budget does not fit the data.
    """
    lo = max(min_classes, int(np.ceil(budget / max_per_class)))
    hi = min(max_classes, budget // min_per_class)
    if lo > hi:
        raise ValueError(
            f"budget {budget} does not fit the data: it needs at least {lo} classes of at "
            f"most {max_per_class} samples, but there are {max_classes} classes"
            if lo > max_classes
            else f"budget {budget} is too small for {min_classes} classes of {min_per_class} samples"
        )
    grid = np.unique(np.round(np.geomspace(lo, hi, num_points)).astype(int))
    return [int(k) for k in grid]


@dataclasses.dataclass
class PowerLawFit:
    """``err = a K^-p + b n^-q + c`` with bootstrap draws of the parameters."""

    a: float
    p: float
    b: float
    q: float
    c: float
    rmse: float
    converged: bool
    message: str
    draws: np.ndarray  # (B, 5) bootstrap parameter draws (a, p, b, q, c)

    def params(self):
        return np.array([self.a, self.p, self.b, self.q, self.c])

    def predict(self, K, n):
        return _model(self.params(), np.asarray(K, float), np.asarray(n, float))

    def best_classes(self, budget, params=None):
        """``K*`` for budget ``N`` (unconstrained by the data)."""
        a, p, b, q, _ = np.asarray(self.params() if params is None else params, dtype=np.float64)
        # a bootstrap draw with p + q near 0 has no finite K*: inf, which
        # interval() drops (Python floats would raise OverflowError instead)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            return float((p * a * np.float64(budget) ** q / (q * b)) ** (1.0 / (p + q)))

    def best_ratio(self, budget, params=None):
        with np.errstate(over="ignore"):
            return float(np.float64(self.best_classes(budget, params)) ** 2 / budget)

    def interval(self, fn, confidence=0.95):
        """Percentile interval of ``fn(params)`` over the bootstrap draws."""
        values = np.array([fn(d) for d in self.draws])
        values = values[np.isfinite(values)]
        if len(values) < 2:
            return [float("nan"), float("nan")]
        lo, hi = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)])
        return [float(lo), float(hi)]


def _model(theta, K, n):
    a, p, b, q, c = theta
    return a * K**-p + b * n**-q + c


def _fit_once(K, n, err):
    K, n, err = (np.asarray(x, float) for x in (K, n, err))
    spread = max(float(err.max() - err.min()), 1e-3)
    best = None
    # a few starts: the surface is not convex in (p, q)
    for p0, q0 in ((0.5, 0.5), (1.0, 0.3), (0.3, 1.0)):
        x0 = [spread, p0, spread, q0, max(0.0, float(err.min()) - spread / 2)]
        res = optimize.least_squares(
            lambda t: _model(t, K, n) - err,
            x0,
            bounds=([0, 0.01, 0, 0.01, 0], [np.inf, 3.0, np.inf, 3.0, 1.0]),
            max_nfev=5000,
        )
        if best is None or res.cost < best.cost:
            best = res
    return best


def fit_power_law(K, n, err, num_bootstrap=200, seed=0):
    """Fits ``err = a K^-p + b n^-q + c`` to sweep points (one per model).

    Args:
        K, n, err: per trained model, its classes, samples per class and error
        num_bootstrap: bootstrap refits (models resampled within each (K, n))

    Returns:
        a :class:`PowerLawFit`; ``converged`` is False (with the reason) when
        the optimiser did not converge or the fit is degenerate (``a`` or
        ``b`` zero: no optimum in K)
    """
    K, n, err = (np.asarray(x, float) for x in (K, n, err))
    if not (len(K) == len(n) == len(err)) or len(K) < 5:
        raise ValueError("need at least 5 (K, n, err) points of equal length")
    if not np.isfinite(err).all():
        raise ValueError("errors must be finite")
    res = _fit_once(K, n, err)
    theta = res.x
    # a term that moves the error by less than 2% of its spread over the
    # swept range means no trade-off was seen: say so rather than extrapolate
    a, p, b, q, _ = theta
    floor = max(1e-4, 0.02 * float(err.max() - err.min()))
    flat_k = a * (K.min() ** -p - K.max() ** -p) < floor
    flat_n = b * (n.min() ** -q - n.max() ** -q) < floor
    degenerate = flat_k or flat_n
    converged = bool(res.success) and not degenerate
    message = (
        res.message
        if not degenerate
        else (
            "degenerate fit: error does not fall with "
            + ("the number of classes" if flat_k else "samples per class")
            + "; no interior optimum"
        )
    )
    rng = np.random.default_rng(seed)
    cells = {}
    for i, key in enumerate(zip(K, n)):
        cells.setdefault(key, []).append(i)
    draws = []
    for _ in range(num_bootstrap if converged else 0):
        rows = np.concatenate([rng.choice(v, len(v), replace=True) for v in cells.values()])
        r = _fit_once(K[rows], n[rows], err[rows])
        draws.append(r.x)
    rmse = float(np.sqrt(np.mean((_model(theta, K, n) - err) ** 2)))
    return PowerLawFit(
        *map(float, theta),
        rmse=rmse,
        converged=converged,
        message=str(message),
        draws=np.array(draws).reshape(-1, 5),
    )


def parabola_optimum(K, err):
    """Model-free best ``K`` of one budget: the vertex of a parabola in ``log K``.

    Returns ``(K*, interior)``; ``interior`` is False when the lowest mean
    error sits at an end of the grid, the parabola opens downwards, or its
    vertex lies outside the swept range (then ``K*`` is the swept ``K`` with
    the lowest mean error).
    """
    K, err = np.asarray(K, float), np.asarray(err, float)
    u = np.log(K)
    if len(np.unique(u)) < 3:
        raise ValueError("a K grid needs at least 3 distinct points")
    ks = np.unique(K)
    means = np.array([err[K == k].mean() for k in ks])
    best = int(np.argmin(means))
    c2, c1, _ = np.polyfit(u, err, 2)
    # interior only when the sweep itself dips inside its range, not at an end
    if c2 > 0 and 0 < best < len(ks) - 1:
        vertex = -c1 / (2 * c2)
        if u.min() <= vertex <= u.max():
            return float(np.exp(vertex)), True
    return float(ks[best]), False


def bootstrap_parabola(K, err, num_bootstrap=200, seed=0):
    """Percentile 95% interval of :func:`parabola_optimum` over models resampled per K."""
    K, err = np.asarray(K, float), np.asarray(err, float)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(K == k) for k in np.unique(K)]
    values = []
    for _ in range(num_bootstrap):
        rows = np.concatenate([rng.choice(g, len(g), replace=True) for g in groups])
        values.append(parabola_optimum(K[rows], err[rows])[0])
    lo, hi = np.percentile(values, [2.5, 97.5])
    return [float(lo), float(hi)]


# --- the planner's bookkeeping: which cells to train, what they say ------------


def check_budgets(budgets, full_budget, sizes):
    """The small budgets (sorted) and the full one, defaults filled in (the full
    budget: a quarter of the median class times the classes; the small ones: a
    quarter and a half of it); ``ValueError`` naming what does not fit."""
    sizes = np.asarray(sizes)
    if full_budget is None:
        full_budget = int(len(sizes) * np.median(sizes) // 4)
    if budgets is None:
        budgets = [full_budget // 4, full_budget // 2]
    budgets = sorted(int(b) for b in budgets)
    if len(budgets) < 2 or len(set(budgets)) < 2:
        raise ValueError(f"need at least two different small budgets; got {budgets}")
    if budgets[-1] >= full_budget:
        raise ValueError(
            f"the small budgets {budgets} must lie below the full budget {full_budget}"
        )
    if full_budget > sizes.sum():
        raise ValueError(
            f"the full budget {full_budget} exceeds the {int(sizes.sum())} pretraining samples"
        )
    return budgets, full_budget


def plan_classes(sizes, per_class, num_classes, influence=None, seed=0):
    """The plan's classes among those with at least ``per_class`` samples: the
    most helpful first by ``influence``, or (``None``) in a random order."""
    eligible = np.flatnonzero(np.asarray(sizes) >= per_class)
    if influence is not None:
        order = [i for i in np.argsort(-np.asarray(influence), kind="stable") if i in eligible]
    else:
        order = list(np.random.default_rng(seed).permutation(eligible))
    return order[:num_classes]


def feasible_grids(budgets, sizes, num_points):
    """Per budget ``N``, the ``K`` of a log grid (``num_points`` values) that the
    class sizes allow: ``K`` is feasible when ``K`` classes hold ``N // K``
    samples. ``ValueError`` when a budget keeps fewer than 3.

    Returns ``(grids, dropped)``: ``{N: [K, ...]}`` and the infeasible ``K`` per ``N``.
    """
    sizes = np.asarray(sizes)
    grids, dropped = {}, {}
    for N in budgets:
        # the grid's few-classes end respects a typical class (the median size);
        # larger classes still count for feasibility
        grid = log_grid(N, len(sizes), int(np.median(sizes)), num_points)
        feasible = [K for K in grid if (sizes >= N // K).sum() >= K]
        dropped[N] = [K for K in grid if K not in feasible]
        if len(feasible) < 3:
            raise ValueError(
                f"budget {N}: only {len(feasible)} feasible points on the K grid {grid} "
                f"(need 3); classes with fewer than N/K samples rule out {dropped[N]}"
            )
        grids[N] = feasible
    return grids, dropped


def sweep_cells(grids, num_seeds, epochs_for):
    """The sweep's cells: every ``(N, K)`` of ``grids`` with ``n = N // K``, ``num_seeds`` times."""
    return [
        {
            "budget": N,
            "classes": K,
            "per_class": N // K,
            "seed": s,
            "epochs": epochs_for(N),
            "arm": "sweep",
        }
        for N, grid in grids.items()
        for K in grid
        for s in range(num_seeds)
    ]


def fit_small_budgets(cells, budgets, seed):
    """:func:`fit_power_law` on the trained cells of the small ``budgets``."""
    small = [c for c in cells if c["budget"] in budgets]
    K = np.array([c["classes"] for c in small], float)
    n = np.array([c["per_class"] for c in small], float)
    err = np.array([c["error"] for c in small])
    return fit_power_law(K, n, err, seed=seed)


def budget_summaries(cells, grids, dropped, fit, seed):
    """Per budget (keys are strings, as stored): the sweep's best ``K`` (a
    parabola in ``log K``, bootstrap CI) and the fit's best ``K`` and ratio."""
    per_budget = {}
    for N, grid in grids.items():
        rows = [c for c in cells if c["budget"] == N]
        k = np.array([c["classes"] for c in rows], float)
        e = np.array([c["error"] for c in rows])
        k_star, interior = parabola_optimum(k, e)
        lo, hi = bootstrap_parabola(k, e, seed=seed)
        per_budget[str(N)] = {
            "grid": grid,
            "dropped_infeasible_K": dropped[N],
            "sweep_best_K": k_star,
            "interior": interior,
            "sweep_best_K_ci95": [lo, hi],
            "sweep_best_ratio": k_star**2 / N,
            "fit_best_K": fit.best_classes(N) if fit.converged else None,
            "fit_best_ratio": fit.best_ratio(N) if fit.converged else None,
            "fit_best_ratio_ci95": fit.interval(lambda t, N=N: fit.best_ratio(N, t))
            if fit.converged
            else None,
        }
    return per_budget


# A fit identifies its exponents when the bootstrap interval of its best K for
# the full budget spans at most this factor; wider, its K is the exponents'
# guess, not the data's, and the plan falls back to the sweeps' pooled ratio.
MAX_IDENTIFIED_K_FACTOR = 4.0


def predict_full_budget(fit, per_budget, budgets, full_budget):
    """The prediction for ``full_budget``: from the fit when it identifies its
    exponents, and from the small budgets' sweep ratios pooled (geometric mean)."""
    ratios = [per_budget[str(N)]["sweep_best_ratio"] for N in budgets]
    pooled_ratio = float(np.exp(np.mean(np.log(ratios))))
    k_fit = fit.best_classes(full_budget) if fit.converged else None
    k_ci = fit.interval(lambda t: fit.best_classes(full_budget, t)) if fit.converged else None
    identified, why = fit_identified(fit, k_fit, k_ci)
    return {
        "full_budget": full_budget,
        "fit_converged": fit.converged,
        "fit_identified": identified,
        "fit_message": fit.message if identified else why,
        "fit": {"a": fit.a, "p": fit.p, "b": fit.b, "q": fit.q, "c": fit.c, "rmse": fit.rmse},
        "K_from_fit": k_fit if identified else None,
        "K_from_fit_unidentified": None if identified else k_fit,
        "K_from_fit_ci95": k_ci,
        "K_from_pooled_sweep_ratio": math.sqrt(pooled_ratio * full_budget),
        "pooled_sweep_ratio": pooled_ratio,
    }


def fit_identified(fit, k_fit, k_ci):
    """``(identified, reason)``: whether the fit's best K for the full budget is
    decided by the data (a finite bootstrap interval within
    :data:`MAX_IDENTIFIED_K_FACTOR`), and why not when it is not."""
    if not fit.converged:
        return False, fit.message
    lo, hi = k_ci if k_ci is not None else (float("nan"), float("nan"))
    finite = all(np.isfinite(v) and v > 0 for v in (k_fit, lo, hi))
    if not finite or hi / lo > MAX_IDENTIFIED_K_FACTOR:
        return False, (
            f"the fit does not identify its exponents (p={fit.p:.3g}, q={fit.q:.3g}; its best "
            f"K's 95% interval [{lo:.3g}, {hi:.3g}] spans more than "
            f"{MAX_IDENTIFIED_K_FACTOR:g}x): the plan uses the sweeps' pooled best ratio"
        )
    return True, fit.message


def invariance_verdict(fit, per_budget, budgets):
    """Does the best ratio ``K/n`` depend on the budget? The fit's answer and the
    sweeps' own.

    From the fit, ``r*(N)`` grows as ``N ** ((q - p) / (p + q))``: invariant
    exactly when ``p = q``. Reported: ``p - q`` with its bootstrap interval,
    and the factor by which ``r*`` changes across the swept budgets (its
    interval too). The verdict: ``"invariant"`` when that factor's interval
    lies within [1/2, 2] (the data decide it: the ratio moves by less than
    twofold), ``"not invariant"`` when the interval of ``p - q`` excludes 0,
    else ``"undecided"``. From the sweeps: whether every budget's own best
    ratio interval holds one common value (their intervals overlap).
    """
    span = max(budgets) / min(budgets)
    out = {"budget_span": span}
    if fit.converged:

        def change(t):
            return span ** ((t[3] - t[1]) / (t[1] + t[3]))

        lo, hi = fit.interval(change)
        d_lo, d_hi = fit.interval(lambda t: t[1] - t[3])
        if 0.5 <= lo and hi <= 2.0:
            verdict = "invariant"
        elif d_lo > 0 or d_hi < 0:
            verdict = "not invariant"
        else:
            verdict = "undecided"
        out.update(
            p_minus_q=fit.p - fit.q,
            p_minus_q_ci95=[d_lo, d_hi],
            ratio_change_over_span=change(fit.params()),
            ratio_change_over_span_ci95=[lo, hi],
            fit_verdict=verdict,
        )
    else:
        out.update(fit_verdict="undecided", fit_note=fit.message)
    ratio_cis = []
    for N in sorted(per_budget, key=int):
        lo_k, hi_k = per_budget[N]["sweep_best_K_ci95"]
        ratio_cis.append([lo_k**2 / int(N), hi_k**2 / int(N)])
    common_lo = max(lo for lo, _ in ratio_cis)
    common_hi = min(hi for _, hi in ratio_cis)
    out.update(
        sweep_ratio_ci95_by_budget=dict(zip(sorted(per_budget, key=int), ratio_cis)),
        sweep_ratios_agree=bool(common_lo <= common_hi),
    )
    return out


def feasible_plan(k_pred, budget, sizes):
    """Rounds ``K*`` and moves it until enough classes hold ``n* = N // K*`` samples:
    up first (more classes need fewer samples each), then down.

    Returns ``(K, n, excluded classes, note or None)``; ``ValueError`` when no ``K`` fits.
    """
    sizes = np.asarray(sizes)

    def fits(k):
        return int((sizes >= budget // k).sum()) >= k

    start = int(np.clip(round(k_pred), 2, len(sizes)))
    up = range(start, len(sizes) + 1)
    down = range(start - 1, 1, -1)
    k = next((k for k in (*up, *down) if fits(k)), None)
    if k is None:
        raise ValueError(
            f"no K fits budget {budget}: no number of classes from 2 to "
            f"{len(sizes)} has that many classes with N // K samples"
        )
    adapted = None
    if k != start:
        before = k - 1 if k > start else k + 1
        n_before = budget // before
        adapted = (
            f"K*={before} needs {before} classes with {n_before} samples but only "
            f"{int((sizes >= n_before).sum())} have them; using K={k}"
        )
    n = budget // k
    excluded = np.flatnonzero(sizes < n).tolist()
    return k, n, excluded, adapted


def check_cells(full_budget, k_plan, n_plan, plan_rows, all_k, num_seeds, epochs, first_seed=0):
    """The full budget's check: the predicted ``K`` (random classes), all classes,
    and the plan itself (its sample rows), seeds ``first_seed`` to ``num_seeds - 1``
    of each (a round of a sequential check)."""
    arms = [
        ("predicted_K", k_plan, n_plan, None),
        ("all_classes", all_k, full_budget // all_k, None),
        ("plan", k_plan, n_plan, [int(i) for i in plan_rows]),
    ]
    cells = []
    for arm, K, n, rows in arms:
        for s in range(first_seed, num_seeds):
            cell = {
                "budget": full_budget,
                "classes": K,
                "per_class": n,
                "seed": s,
                "epochs": epochs,
                "arm": arm,
            }
            if rows is not None:
                cell["sample_rows"] = rows
            cells.append(cell)
    return cells


def verification_summary(cells, per_budget, full_budget, all_k, rule=None):
    """What the full budget's cells measured: its own best ``K``, the accuracy
    (mean, anytime-valid 95% interval) of each check arm, and the plan's and
    the predicted ``K``'s verdicts against all classes, paired by seed and
    decided by ``rule`` (a :class:`StoppingRule`)."""
    full = [c for c in cells if c["budget"] == full_budget and c["arm"] == "sweep"]
    by_k = {}
    for c in full:
        by_k.setdefault(c["classes"], []).append(c["error"])
    best_grid_k = min(by_k, key=lambda k: np.mean(by_k[k]))

    def acc(arm):
        per_seed = sorted((c["seed"], 1 - c["error"]) for c in cells if c["arm"] == arm)
        mean, lo, hi = arm_summary([a for _, a in per_seed])
        return mean, [lo, hi]

    def by_seed(arm):
        return {c["seed"]: 1 - c["error"] for c in cells if c["arm"] == arm}

    def paired(arm, other):
        a, b = by_seed(arm), by_seed(other)
        seeds = sorted(set(a) & set(b))
        pair = (np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds]))
        return sequential_comparison(pair, pair, rule or StoppingRule(), None, "accuracy")

    grid = sorted(by_k)
    predicted_k = next((c["classes"] for c in cells if c["arm"] == "predicted_K"), None)
    steps = None
    if predicted_k is not None:  # grid steps between the predicted and the best grid K
        u = np.log(np.asarray(grid, float))
        step = float(np.mean(np.diff(u))) if len(u) > 1 else 1.0
        steps = abs(math.log(predicted_k) - math.log(best_grid_k)) / step

    return {
        "measured_best_K": per_budget[str(full_budget)]["sweep_best_K"],
        "measured_best_K_ci95": per_budget[str(full_budget)]["sweep_best_K_ci95"],
        "measured_best_grid_K": best_grid_k,
        "accuracy_at_best_grid_K": 1 - float(np.mean(by_k[best_grid_k])),
        "accuracy_at_predicted_K": acc("predicted_K")[0],
        "accuracy_at_predicted_K_ci95": acc("predicted_K")[1],
        "accuracy_all_classes": acc("all_classes")[0],
        "accuracy_all_classes_ci95": acc("all_classes")[1],
        "all_classes_K": all_k,
        "accuracy_plan": acc("plan")[0],
        "accuracy_plan_ci95": acc("plan")[1],
        "predicted_K": predicted_k,
        "predicted_vs_best_grid_K_steps": steps,
        "plan_vs_all_classes": paired("plan", "all_classes"),
        "predicted_K_vs_all_classes": paired("predicted_K", "all_classes"),
    }
