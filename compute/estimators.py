"""The influence estimator of Jain et al. (CVPR 2023) and its summaries.

``Infl[c -> t]`` = mean output on target ``t`` of the models whose subset
held class ``c`` minus the mean of the models whose subset did not.
"""

import dataclasses

import numpy as np
from scipy import stats


@dataclasses.dataclass
class InfluenceEstimate:
    influence: np.ndarray  # (C, T)
    stderr: np.ndarray  # (C, T) Welch standard error of the difference
    n_in: np.ndarray  # (C,) models with the class
    n_out: np.ndarray  # (C,) models without it


def class_influence(masks, outputs):
    """Difference of means, with a standard error, for every (class, target).

    Args:
        masks: ``(M, C)`` bool, class ``c`` in model ``m``'s subset
        outputs: ``(M, T)`` the target function of each model on each target

    Returns:
        an :class:`InfluenceEstimate`
    """
    X = np.asarray(masks, dtype=np.float64)
    Y = np.asarray(outputs, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"masks (M, C) and outputs (M, T) must share M; got {X.shape} and {Y.shape}"
        )
    if not np.isfinite(Y).all():
        raise ValueError("outputs contain NaN or infinite values")
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


@dataclasses.dataclass
class AggregateInfluence:
    influence: np.ndarray  # (C,) mean over targets
    stderr: np.ndarray  # (C,)
    ci_low: np.ndarray  # (C,)
    ci_high: np.ndarray  # (C,)
    confidence: float


def aggregate_influence(masks, outputs, confidence=0.95):
    """Per-class influence averaged over the targets, with a confidence interval.

    The mean over targets of ``Infl[c -> t]`` equals the difference of means of
    each model's average output, so its interval comes from those ``M``
    per-model averages (Welch's t), which accounts for the targets sharing
    models.
    """
    per_model = np.asarray(outputs, dtype=np.float64).mean(axis=1, keepdims=True)
    est = class_influence(masks, per_model)
    infl, se = est.influence[:, 0], est.stderr[:, 0]
    df = _welch_df(masks, per_model[:, 0])
    q = stats.t.ppf(0.5 + confidence / 2, df)
    return AggregateInfluence(infl, se, infl - q * se, infl + q * se, confidence)


def _welch_df(masks, y):
    X = np.asarray(masks, dtype=bool)
    df = np.empty(X.shape[1])
    for c in range(X.shape[1]):
        a, b = y[X[:, c]], y[~X[:, c]]
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        denom = va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)
        df[c] = (va + vb) ** 2 / denom if denom > 0 else len(a) + len(b) - 2
    return df


def mean_ci(x, confidence=0.95):
    """``(mean, low, high)``: the mean of ``x`` with its Student-t interval."""
    x = np.asarray(x, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return mean, mean - float(half), mean + float(half)


def split_halves(num_models):
    """Two disjoint halves of the model indices that keep pairs together.

    Models ``2i`` and ``2i + 1`` are complementary in the default design, so
    whole pairs go to alternating halves.
    """
    pair = np.arange(num_models) // 2
    first = np.flatnonzero(pair % 2 == 0)
    second = np.flatnonzero(pair % 2 == 1)
    return first, second


def split_half_spearman(masks, outputs):
    """Spearman correlation of the per-class influence of two model halves.

    Tells how settled the class ranking is: near 1, more models would not
    change it; near 0, the ranking beyond the strongest classes is noise.
    """
    first, second = split_halves(len(masks))
    outputs = np.asarray(outputs, dtype=np.float64)
    try:
        a, b = (class_influence(masks[h], outputs[h].mean(axis=1, keepdims=True)).influence[:, 0]
                for h in (first, second))
    except ValueError:  # a half in which some class is never in (or never out)
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def top_k_classes(influence, k):
    """Per target: indices of the k most positive and k most negative classes.

    Returns ``(positive, negative)``, each ``(T, k)``, strongest first.
    """
    k = min(k, influence.shape[0])
    order = np.argsort(influence, axis=0, kind="stable")  # (C, T) ascending
    negative = order[:k].T
    positive = order[::-1][:k].T
    return positive, negative
