"""Influence estimators, their standard errors, and reliability figures.

``Infl[c -> t]`` is the effect on target ``t``'s output of adding class ``c``
to a model's pretraining subset. Two estimators:

``"difference_of_means"``
    Jain et al. (CVPR 2023): the mean output of the models that saw ``c``
    minus the mean of those that did not (:func:`class_influence` is the
    paper's arithmetic). It does not adjust for which other classes shared
    a subset, except in an orthogonal design, where it equals least squares.
``"regression"``
    Least squares of the outputs on the masks (with an intercept): removes
    the other classes' additive effects in any design. Needs more models
    than classes.

Standard errors follow the design: least-squares residuals for regression
and for an orthogonal design; for complementary pairs the spread of the
pairs' differences (the two models of a pair are anti-correlated, which
Welch's formula ignores); Welch's otherwise (independent subsets).
``"auto"`` takes regression where it is identified with at least
:data:`MIN_RESIDUAL_DF` residual degrees of freedom and the design inflates
its variance at most :data:`MAX_VARIANCE_INFLATION` times (a rule on the
masks alone, so it cannot bias the intervals), else the difference of means.
(A ridge regression for designs with about as many models as classes was
measured and left out: its intervals covered the truth 87% of the time at
64 models and 38 classes, 28% at 200 classes; shrinkage biases
strong effects towards zero.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import linalg, stats

from .checks import check_number

ESTIMATORS = ("auto", "regression", "difference_of_means")
# residual degrees of freedom below which "auto" does not trust a regression
MIN_RESIDUAL_DF = 10
# "auto" takes the regression only where noise inflates its variance at most
# this much over an orthogonal design's (mean variance inflation factor of
# the masks): measured on the demo, complementary pairs at 144 models for 68
# classes (factor 18) gave intervals 2.3x wider than the difference of means
MAX_VARIANCE_INFLATION = 2.0
# targets per chunk in the matrix estimators (bounded memory at 1,000s of models)
_CHUNK = 4096


@dataclasses.dataclass
class InfluenceEstimate:
    influence: np.ndarray  # (C, T)
    stderr: np.ndarray  # (C, T) standard error valid for the design
    n_in: np.ndarray  # (C,) models with the class
    n_out: np.ndarray  # (C,) models without it
    df: object = None  # residual degrees of freedom: a number, or (C,) (Welch)
    estimator: str = "difference_of_means"
    se_method: str = "welch"  # "welch", "pairs" or "residuals"


def _as_arrays(masks, outputs):
    X = np.asarray(masks, dtype=np.float64)
    Y = np.asarray(outputs, dtype=np.float64)
    if Y.ndim == 1:
        Y = Y[:, None]
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"masks (M, C) and outputs (M, T) must share M; got {X.shape} and {Y.shape}"
        )
    if not np.isfinite(Y).all():
        raise ValueError("outputs contain NaN or infinite values")
    return X, Y


def class_influence(masks: np.ndarray, outputs: np.ndarray):
    """The paper's difference of means, with Welch's standard error, per (class, target).

    Args:
        masks: ``(M, C)`` bool, class ``c`` in model ``m``'s subset
        outputs: ``(M, T)`` the target function of each model on each target

    Returns:
        an :class:`InfluenceEstimate`
    """
    X, Y = _as_arrays(masks, outputs)
    n_in = X.sum(axis=0)
    n_out = X.shape[0] - n_in
    if (n_in < 1).any() or (n_out < 1).any():
        raise ValueError("every class must be both in and out of some subset")
    sum_in = X.T @ Y
    sum_out = Y.sum(axis=0) - sum_in
    sq_in = X.T @ (Y * Y)
    sq_out = (Y * Y).sum(axis=0) - sq_in
    mean_in = sum_in / n_in[:, None]
    mean_out = sum_out / n_out[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        var_in = np.maximum(sq_in - n_in[:, None] * mean_in**2, 0) / (n_in[:, None] - 1)
        var_out = np.maximum(sq_out - n_out[:, None] * mean_out**2, 0) / (n_out[:, None] - 1)
        stderr = np.sqrt(var_in / n_in[:, None] + var_out / n_out[:, None])
    return InfluenceEstimate(mean_in - mean_out, stderr, n_in, n_out)


def is_orthogonal(masks):
    """Every class in exactly half the models, and every two classes together in a
    quarter: the centred masks are orthogonal (difference of means = least squares)."""
    X = np.asarray(masks, dtype=np.int64)
    M = X.shape[0]
    if M % 4 or (X.sum(axis=0) * 2 != M).any():
        return False
    S = 2 * X - 1
    G = S.T @ S
    return not np.any(G - np.diag(np.diag(G)))


def is_complementary_pairs(masks):
    """Model ``2i + 1`` sees exactly the classes model ``2i`` did not."""
    X = np.asarray(masks, dtype=bool)
    return len(X) % 2 == 0 and len(X) >= 4 and bool((X[1::2] == ~X[0::2]).all())


def regression_kind(masks, min_df=1):
    """How least squares on the masks is identified, or None.

    ``"absolute"``: ``[1, X]`` has full rank; a class's coefficient is the
    effect of adding it. ``"relative"``: every model sees the same number of
    classes (the paper's, balanced and pairs designs), so only differences
    between classes are identified; the coefficient is then the effect of
    a class relative to the average other class, the quantity the difference
    of means estimates there. Needs ``>= min_df`` residual degrees of freedom.
    """
    X = np.asarray(masks, dtype=np.float64)
    M, C = X.shape
    sizes = X.sum(axis=1)
    fixed = bool(np.all(sizes == sizes[0]))
    rank = int(np.linalg.matrix_rank(X - X.mean(axis=0)))
    if not fixed and rank == C and M - C - 1 >= min_df:
        return "absolute"
    if fixed and rank == C - 1 and C > 2 and M - C >= min_df:
        return "relative"
    return None


def variance_inflation(masks):
    """Mean variance inflation of least squares on ``masks`` against an orthogonal
    design of as many models: 1 for an orthogonal design, about ``M / (M - C)``
    for random subsets, large for nearly unidentified designs."""
    X = np.asarray(masks, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    G = Xc.T @ Xc
    if (X.sum(axis=1) == X[0].sum()).all():  # fixed size: the sum-to-zero contrasts
        inv = linalg.pinvh(G)
    else:
        try:
            inv = linalg.inv(G)
        except linalg.LinAlgError:
            return float("inf")
    return float(np.mean(np.diag(inv)) * np.mean(np.diag(G)))


def check_estimator(masks: np.ndarray, estimator: str) -> None:
    """Raises ``ValueError`` (naming the problem) unless ``estimator`` can run on ``masks``."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}")
    if estimator == "regression" and regression_kind(masks) is None:
        M, C = np.shape(masks)
        raise ValueError(
            f"the regression needs more models than classes + 1 and masks of full "
            f"rank; got {M} models for {C} classes: use more models or "
            f"estimator='difference_of_means'"
        )


def estimate_influence(masks: np.ndarray, outputs: np.ndarray, estimator: str = "auto"):
    """``Infl[c -> t]`` with standard errors valid for the design (see the module).

    Returns an :class:`InfluenceEstimate`; raises ``ValueError`` naming the
    problem (unknown estimator, a regression the design cannot identify).
    """
    check_estimator(masks, estimator)
    X, Y = _as_arrays(masks, outputs)
    if estimator == "auto":
        estimator = (
            "regression"
            if regression_kind(X, MIN_RESIDUAL_DF)
            and variance_inflation(X) <= MAX_VARIANCE_INFLATION
            else "difference_of_means"
        )
    if estimator == "regression":
        return _least_squares(X, Y, regression_kind(X))
    est = class_influence(X, Y)
    if is_orthogonal(X) and regression_kind(X) == "absolute":
        # difference of means equals least squares here: its residuals give the error
        ols = _least_squares(X, Y, "absolute")
        return dataclasses.replace(est, stderr=ols.stderr, df=ols.df, se_method="residuals")
    if is_complementary_pairs(X):
        return dataclasses.replace(
            est, stderr=_paired_stderr(X, Y), df=len(X) // 2 - 1, se_method="pairs"
        )
    return dataclasses.replace(est, df=_welch_df(X, Y) if Y.shape[1] == 1 else None)


def _least_squares(X, Y, kind):
    """Least squares on the centred masks (the intercept's job), for all targets.

    ``kind`` ``"relative"``: the masks' centred columns sum to zero (fixed
    subset size); the minimum-norm solution (classes' effects summing to
    zero) is scaled by ``C / (C - 1)`` to the effect relative to the
    average *other* class.
    """
    M, C = X.shape
    Xc = X - X.mean(axis=0)
    if kind == "absolute":
        G_inv = linalg.inv(Xc.T @ Xc)
        scale, df = 1.0, M - C - 1
    else:
        G_inv = linalg.pinvh(Xc.T @ Xc)
        scale, df = C / (C - 1), M - C
    P = scale * (G_inv @ Xc.T)  # (C, M): coefficients = P @ y
    var_factor = scale**2 * np.diag(G_inv)
    coef = np.empty((C, Y.shape[1]))
    stderr = np.empty((C, Y.shape[1]))
    for s in range(0, Y.shape[1], _CHUNK):
        y = Y[:, s : s + _CHUNK] - Y[:, s : s + _CHUNK].mean(axis=0)
        beta = P @ y
        rss = ((y - Xc @ beta / scale) ** 2).sum(axis=0)
        coef[:, s : s + _CHUNK] = beta
        stderr[:, s : s + _CHUNK] = np.sqrt(var_factor[:, None] * (rss / df)[None, :])
    n_in = X.sum(axis=0)
    return InfluenceEstimate(coef, stderr, n_in, M - n_in, df, "regression", "residuals")


def _paired_stderr(X, Y):
    """Standard error of the difference of means over complementary pairs: the
    spread of each pair's signed difference (``P - 1`` degrees of freedom)."""
    sign = np.where(X[0::2] > 0, 1.0, -1.0)  # (P, C): +1 where the pair's first model has c
    diff = Y[0::2] - Y[1::2]  # (P, T)
    P = len(diff)
    # mean of d_pc = sign_pc * diff_pt over pairs, and its variance, per (c, t)
    mean = sign.T @ diff / P
    sq = (diff * diff).sum(axis=0)  # sign^2 = 1
    var = np.maximum(sq[None, :] - P * mean**2, 0) / (P - 1)
    return np.sqrt(var / P)


def _welch_df(X, Y):
    y = Y[:, 0]
    inside = X > 0
    df = np.empty(X.shape[1])
    for c in range(X.shape[1]):
        a, b = y[inside[:, c]], y[~inside[:, c]]
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        denom = va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)
        df[c] = (va + vb) ** 2 / denom if denom > 0 else len(a) + len(b) - 2
    return df


@dataclasses.dataclass
class AggregateInfluence:
    influence: np.ndarray  # (C,) mean over targets
    stderr: np.ndarray  # (C,)
    ci_low: np.ndarray  # (C,)
    ci_high: np.ndarray  # (C,)
    confidence: float
    p_value: np.ndarray = None  # (C,) two-sided, influence = 0
    q_value: np.ndarray = None  # (C,) Benjamini-Hochberg over the classes
    df: object = None
    estimator: str = "difference_of_means"
    se_method: str = "welch"


def aggregate_influence(
    masks: np.ndarray, outputs: np.ndarray, confidence: float = 0.95, estimator: str = "auto"
) -> AggregateInfluence:
    """Per-class influence averaged over the targets, with an interval and a q-value.

    The mean over targets of ``Infl[c -> t]`` equals the influence on each
    model's average output (both estimators are linear in the outputs), so
    its standard error comes from those ``M`` per-model averages, which
    accounts for the targets sharing models. ``q_value``: Benjamini-Hochberg
    adjusted p-values over the classes (false-discovery control).
    """
    check_number(confidence, "confidence", 0, 1, low_open=True, high_open=True)
    per_model = np.asarray(outputs, dtype=np.float64)
    per_model = per_model.mean(axis=1, keepdims=True) if per_model.ndim == 2 else per_model
    est = estimate_influence(masks, per_model, estimator)
    infl, se = est.influence[:, 0], est.stderr[:, 0]
    df = np.broadcast_to(np.asarray(est.df, dtype=np.float64), infl.shape)
    q = stats.t.ppf(0.5 + confidence / 2, df)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, infl / se, np.where(infl == 0, 0.0, np.inf))
    p = 2 * stats.t.sf(np.abs(t), df)
    return AggregateInfluence(
        infl,
        se,
        infl - q * se,
        infl + q * se,
        confidence,
        p,
        benjamini_hochberg(p),
        est.df,
        est.estimator,
        est.se_method,
    )


def benjamini_hochberg(p_values: np.ndarray):
    """Benjamini-Hochberg adjusted p-values (q-values), as scipy computes them."""
    p = np.asarray(p_values, dtype=np.float64)
    if p.size == 0:
        return p
    return stats.false_discovery_control(np.clip(p, 0.0, 1.0), method="bh")


def mean_ci(x, confidence=0.95):
    """``(mean, low, high)``: the mean of ``x`` with its Student-t interval."""
    x = np.asarray(x, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return mean, mean - float(half), mean + float(half)


# --- reliability --------------------------------------------------------------


def split_groups(num_models, block_size=1, masks=None):
    """``(M,)`` unit of each row for splitting a run in halves: whole blocks where
    there are two or more, else whole complementary pairs, else rows."""
    rows = np.arange(num_models)
    if block_size > 1 and num_models // block_size >= 2:
        return rows // block_size
    if masks is not None and is_complementary_pairs(masks):
        return rows // 2
    return rows


def split_halves(num_models, block_size=2, masks=None):
    """Two disjoint halves of the model indices: alternate units (see :func:`split_groups`)."""
    groups = (
        split_groups(num_models, block_size, masks)
        if masks is not None
        else (np.arange(num_models) // block_size)
    )
    units = np.unique(groups)
    first = np.flatnonzero(np.isin(groups, units[0::2]))
    second = np.flatnonzero(np.isin(groups, units[1::2]))
    return first, second


def split_half(
    masks: np.ndarray, outputs: np.ndarray, block_size: int = 1, estimator: str = "auto"
) -> dict:
    """The per-class influence of two disjoint halves of the models, compared.

    Returns ``{"spearman", "z_sd", "halves"}``: the Spearman correlation of
    the halves' rankings (how settled the ranking is: near 0, the ranking
    beyond the strongest classes is noise), and the standard deviation over
    classes of ``(a - b) / sqrt(se_a^2 + se_b^2)``, which is about 1 when
    the standard errors are right. NaN where a half cannot be estimated.
    """
    masks = np.asarray(masks, dtype=bool)
    first, second = split_halves(len(masks), block_size, masks)
    y = np.asarray(outputs, dtype=np.float64)
    y = y.mean(axis=1) if y.ndim == 2 else y
    try:
        a, b = (aggregate_influence(masks[h], y[h], estimator=estimator) for h in (first, second))
    except ValueError:  # a half in which some class is never in (or never out)
        return {"spearman": float("nan"), "z_sd": float("nan"), "halves": [len(first), len(second)]}
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (a.influence - b.influence) / np.sqrt(a.stderr**2 + b.stderr**2)
    z = z[np.isfinite(z)]
    return {
        "spearman": float(stats.spearmanr(a.influence, b.influence).statistic),
        "z_sd": float(z.std(ddof=1)) if len(z) > 1 else float("nan"),
        "halves": [len(first), len(second)],
    }


def split_half_spearman(masks: np.ndarray, outputs: np.ndarray, block_size: int = 2) -> float:
    """Spearman correlation of the per-class influence of two model halves."""
    return split_half(masks, outputs, block_size)["spearman"]


def predict_outputs(masks, outputs, new_masks, estimator="auto"):
    """Outputs the estimated class effects predict for models with ``new_masks``:
    ``mean_t + (x - mean_x) . Infl[:, t]`` (least squares' own prediction for
    the regression), ``(M', T)``."""
    X, Y = _as_arrays(masks, outputs)
    est = estimate_influence(X, Y, estimator)
    Xn = np.asarray(new_masks, dtype=np.float64)
    return Y.mean(axis=0) + (Xn - X.mean(axis=0)) @ est.influence


def linear_datamodeling_score(
    masks: np.ndarray,
    outputs: np.ndarray,
    heldout_masks: np.ndarray,
    heldout_outputs: np.ndarray,
    estimator: str = "auto",
) -> dict:
    """The linear datamodeling score (datamodels, TRAK) of class influence.

    On held-out models, the Spearman correlation over models between the
    outputs predicted from the classes each saw and the outputs measured,
    per target, averaged over the targets whose measured outputs vary.
    Returns ``{"lds", "lds_mean_output", "num_targets", "num_heldout"}``;
    ``lds_mean_output`` is the same on each model's mean output.
    """
    pred = predict_outputs(masks, outputs, heldout_masks, estimator)
    return datamodeling_score(pred, heldout_outputs)


def example_datamodeling_score(scores, heldout_masks, heldout_outputs) -> dict:
    """The linear datamodeling score of example-level scores ``(N, T)``: on
    held-out models trained on the images of ``heldout_masks`` ``(M, N)``, the
    outputs predicted as the sum of the scores of the images each saw against
    those measured (see :func:`datamodeling_score`)."""
    pred = np.asarray(heldout_masks, dtype=np.float64) @ np.asarray(scores, dtype=np.float64)
    return datamodeling_score(pred, heldout_outputs)


def datamodeling_score(predicted, heldout_outputs) -> dict:
    """Per target, the Spearman correlation over held-out models between the
    predicted outputs ``(M, T)`` and those measured, averaged over the targets
    whose outputs vary (with ``lds_mean_output``, the same on each model's mean)."""
    Yh = np.asarray(heldout_outputs, dtype=np.float64)
    Yh = Yh[:, None] if Yh.ndim == 1 else Yh
    pred = np.asarray(predicted, dtype=np.float64)
    if len(Yh) < 3:
        raise ValueError(f"the datamodeling score needs >= 3 held-out models; got {len(Yh)}")
    varies = (Yh.std(axis=0) > 0) & (pred.std(axis=0) > 0)
    rp = stats.rankdata(pred[:, varies], axis=0)
    rm = stats.rankdata(Yh[:, varies], axis=0)
    rp, rm = rp - rp.mean(axis=0), rm - rm.mean(axis=0)
    rho = (rp * rm).sum(axis=0) / np.sqrt((rp**2).sum(axis=0) * (rm**2).sum(axis=0))
    mean_rho = stats.spearmanr(pred.mean(axis=1), Yh.mean(axis=1)).statistic
    return {
        "lds": float(rho.mean()) if rho.size else float("nan"),
        "lds_mean_output": float(mean_rho),
        "num_targets": int(varies.sum()),
        "num_heldout": int(len(Yh)),
    }


def top_k_classes(influence: np.ndarray, k: int):
    """Per target: indices of the k most positive and k most negative classes.

    Returns ``(positive, negative)``, each ``(T, k)``, strongest first.
    """
    k = min(k, influence.shape[0])
    order = np.argsort(influence, axis=0, kind="stable")  # (C, T) ascending
    negative = order[:k].T
    positive = order[::-1][:k].T
    return positive, negative
