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

import numpy as np
from scipy import optimize


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
        a, p, b, q, _ = self.params() if params is None else params
        return float((p * a * budget**q / (q * b)) ** (1.0 / (p + q)))

    def best_ratio(self, budget, params=None):
        return self.best_classes(budget, params) ** 2 / budget

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
