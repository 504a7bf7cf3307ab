"""Curation: choose pretraining classes to remove, and prove the choice by retraining.

The counterfactual of Jain et al. (CVPR 2023): retrain from scratch with the
same protocol on the full pretraining set, on the curated set, and on the
same number of randomly removed classes, several seeds each. Seed ``s`` is
the same model seed in every arm, so arms compare in pairs (common random
numbers: initialisation and data order match, only the classes differ).
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

from .checks import check_int, check_number
from .digests import digest
from .estimators import mean_ci
from .sequential import StoppingRule, confidence_sequence, paired_verdict

if TYPE_CHECKING:  # names in annotations only
    from collections.abc import Sequence

SELECTION_RULES = ("harmful_fdr", "most_harmful", "below_threshold", "ci_below_zero", "classes")
DEFAULT_RULE = "harmful_fdr"
# the false-discovery rate the default rule controls
DEFAULT_FDR = 0.1
ORDERS = ("harmful_first", "helpful_first", "random")
# the smallest pretraining set a curated set may leave
MIN_REMAINING_CLASSES = 2


def select_classes(
    class_names: Sequence[str],
    class_influence: np.ndarray,
    ci_high: np.ndarray | None = None,
    rule: str = DEFAULT_RULE,
    k: int | None = None,
    threshold: float | None = None,
    classes: Sequence[str] | None = None,
    q_values: np.ndarray | None = None,
    fdr_level: float = DEFAULT_FDR,
) -> list[int]:
    """Indices of the classes a rule selects for removal, most harmful first.

    Rules:
        ``"harmful_fdr"``: every class with negative influence and a
            Benjamini-Hochberg q-value below ``fdr_level`` (the expected
            share of false discoveries among all classes called non-zero
            stays below that level)
        ``"most_harmful"``: the ``k`` classes with the lowest aggregate influence
        ``"below_threshold"``: every class with influence below ``threshold``
        ``"ci_below_zero"``: every class whose confidence interval lies below 0
            (its upper bound ``ci_high`` < 0); no correction for testing
            many classes
        ``"classes"``: the names in ``classes``

    Raises:
        ValueError: naming the problem, when the rule's argument is bad or
        the rule selects nothing
    """
    names = list(class_names)
    infl = np.asarray(class_influence, dtype=np.float64)
    num = len(names)
    if infl.shape != (num,):
        raise ValueError(
            f"class_influence must have one value per class ({num}); got shape {infl.shape}"
        )
    if rule == "harmful_fdr":
        check_fdr_level(fdr_level)
        if q_values is None:
            raise ValueError(
                "rule 'harmful_fdr' needs the classes' q-values; this run has "
                "none (computed before 0.2): compute it again, or use rule "
                "'ci_below_zero'"
            )
        q = np.asarray(q_values, dtype=np.float64)
        chosen = np.flatnonzero((infl < 0) & (q < fdr_level))
        if len(chosen) == 0:
            best = int(np.argmin(np.where(infl < 0, q, np.inf))) if (infl < 0).any() else None
            lowest = (
                f" (the lowest q of a harmful class: {names[best]!r} at {q[best]:.2g})"
                if best is not None
                else ""
            )
            raise ValueError(
                f"no class is harmful at false-discovery level {fdr_level:g}{lowest}; "
                f"nothing selected (train more models, or use rule 'most_harmful' with k)"
            )
    elif rule == "most_harmful":
        check_num_removed(k, num)
        chosen = np.argsort(infl, kind="stable")[:k]
    elif rule == "below_threshold":
        check_number(threshold, "threshold")
        chosen = np.flatnonzero(infl < threshold)
        if len(chosen) == 0:
            raise ValueError(
                f"no class has influence below {threshold:g} (the lowest is "
                f"{names[int(np.argmin(infl))]!r} at {infl.min():+.4g}); nothing selected"
            )
    elif rule == "ci_below_zero":
        if ci_high is None:
            raise ValueError("rule 'ci_below_zero' needs the classes' ci_high")
        chosen = np.flatnonzero(np.asarray(ci_high) < 0)
        if len(chosen) == 0:
            raise ValueError(
                "no class's confidence interval lies below zero: no class is "
                "harmful with confidence; nothing selected (try more models, or "
                "rule 'most_harmful' with k)"
            )
    elif rule == "classes":
        if isinstance(classes, str) or not classes:
            raise ValueError(
                f"rule 'classes' needs a non-empty list of class names; got {classes!r}"
            )
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise ValueError(f"unknown pretraining class(es): {unknown}")
        chosen = np.array(sorted({names.index(c) for c in classes}))
    else:
        raise ValueError(f"rule must be one of {SELECTION_RULES}; got {rule!r}")
    if num - len(chosen) < MIN_REMAINING_CLASSES:
        raise ValueError(
            f"the rule selects {len(chosen)} of {num} classes; at least "
            f"{MIN_REMAINING_CLASSES} must remain to pretrain on"
        )
    chosen = np.asarray(chosen, dtype=int)
    return chosen[np.argsort(infl[chosen], kind="stable")].tolist()


def check_fdr_level(level):
    check_number(level, "fdr_level", 0, 1, low_open=True, high_open=True)


def check_num_removed(k: int, num_classes: int, name: str = "k"):
    largest = num_classes - MIN_REMAINING_CLASSES
    note = f" (the number of classes, {num_classes}, minus the {MIN_REMAINING_CLASSES} that must remain)"
    check_int(k, name, 1, largest, note=note)


@dataclasses.dataclass
class CurationPlan:
    """The retraining runs of a counterfactual, deduplicated.

    Attributes:
        masks: ``(R, C)`` bool, the classes each retrained model sees
        seeds: ``(R,)`` model seed index of each row
        cells: ``[{"arm", "k", "rows"}]``; ``rows[s]`` is the row of seed ``s``;
            ``"sweep": True`` on the sweep's own arms once their seed count is
            the fixed ``sweep_seeds`` (it does not depend on when the check stops)
            Arms: ``"full"`` (k=0), ``"curated"``, the orders
            ``"harmful_first"``, ``"helpful_first"``, ``"random"``, and
            ``"each"`` (k=1, with ``"class"``: one curated class removed alone)
        removed: the curated set's class indices
    """

    masks: np.ndarray
    seeds: np.ndarray
    cells: list
    removed: list

    def fingerprint(self):
        # insertion order, not sorted: plans stored before digest() keep their name
        return digest(
            json.dumps(
                {
                    "masks": np.packbits(self.masks).tolist(),
                    "shape": list(self.masks.shape),
                    "seeds": self.seeds.tolist(),
                }
            )
        )

    def cell(self, arm, k, cls=None):
        for c in self.cells:
            if c["arm"] == arm and c["k"] == k and c.get("class") == cls:
                return c
        raise KeyError((arm, k, cls))


def plan_curation(
    class_influence: np.ndarray,
    removed: Sequence[int],
    num_seeds: int,
    sweep_ks: Sequence[int] = (),
    seed: int = 0,
    each: bool = True,
    sweep_seeds: int | None = None,
):
    """Plans the counterfactual: full, curated and random (and an optional sweep).

    The curated set removes ``removed``. The random baseline removes, for
    each seed, its own random set of the same size. With ``sweep_ks`` each
    ``k`` is also tried most-harmful-first, most-helpful-first and at random;
    the most-helpful-first arm at the curated ``k`` is always included (the
    paper's sanity check: removing helpful classes must hurt). With
    ``each``, every curated class is also removed on its own, so each
    selection is confirmed (or not) by retraining. ``sweep_seeds`` caps the
    seeds of the arms that only draw the sweep (every order at a ``k`` other
    than the curated one), so a sequential
    check that needs many seeds for its verdicts does not train the plot's
    arms as often. The rows of seed ``s`` do not depend on ``num_seeds``.
    """
    infl = np.asarray(class_influence, dtype=np.float64)
    num = len(infl)
    check_int(num_seeds, "num_seeds", 2, note=" (for a paired interval)")
    if sweep_seeds is not None:
        check_int(sweep_seeds, "sweep_seeds", 2)
    plot_seeds = num_seeds if sweep_seeds is None else min(num_seeds, sweep_seeds)
    fixed_sweep = sweep_seeds is not None and num_seeds >= sweep_seeds
    removed = [int(c) for c in removed]
    if not removed or len(set(removed)) != len(removed) or not all(0 <= c < num for c in removed):
        raise ValueError(f"removed must be distinct class indices in [0, {num}); got {removed}")
    check_num_removed(len(removed), num, "the number of removed classes")
    ks = sorted({int(k) for k in (sweep_ks or ())})
    for k in ks:
        check_num_removed(k, num, "every sweep k")
    k_cur = len(removed)

    harmful_first = np.argsort(infl, kind="stable")
    helpful_first = harmful_first[::-1]
    rows, masks, seeds, cells = {}, [], [], []

    def row_of(mask, s):
        key = (mask.tobytes(), s)
        if key not in rows:
            rows[key] = len(masks)
            masks.append(mask)
            seeds.append(s)
        return rows[key]

    def add(arm, k, removed_for_seed, seeds=num_seeds, **extra):
        idx = []
        for s in range(seeds):
            mask = np.ones(num, dtype=bool)
            mask[removed_for_seed(s)] = False
            idx.append(row_of(mask, s))
        cells.append({"arm": arm, "k": int(k), "rows": idx, **extra})

    def random_classes(k):
        # its own stream per (k, seed): arms and sweeps that share k share draws
        return lambda s: np.random.default_rng([seed, k, s]).choice(num, k, replace=False)

    add("full", 0, lambda s: [])
    add("curated", k_cur, lambda s: removed)
    for k in sorted(set(ks) | {k_cur}):
        # the sweep's own arms have a seed count fixed in advance when the
        # budget reaches sweep_seeds (then their fixed-sample intervals hold)
        extra = {} if k == k_cur else {"sweep": fixed_sweep}
        seeds_k = num_seeds if k == k_cur else plot_seeds
        add("harmful_first", k, lambda s, k=k: harmful_first[:k], seeds_k, **extra)
        add("helpful_first", k, lambda s, k=k: helpful_first[:k], seeds_k, **extra)
        add("random", k, random_classes(k), seeds_k, **extra)
    if each:
        for c in removed:
            add("each", 1, lambda s, c=c: [c], **{"class": c})
    return CurationPlan(np.array(masks), np.array(seeds), cells, removed)


def paired_comparison(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> dict:
    """``a - b`` paired by seed: mean, CI, paired t-test p-value, wins."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = a - b
    mean, lo, hi = mean_ci(diff, confidence)
    if np.allclose(diff, diff[0]):
        p = 0.0 if diff[0] != 0 else 1.0  # no spread: the t statistic is undefined
    else:
        p = float(stats.ttest_rel(a, b).pvalue)
    return {
        "diff": mean,
        "ci95": [lo, hi],
        "p_value": p,
        "wins": int((diff > 0).sum()),
        "losses": int((diff < 0).sum()),
        "num_pairs": int(len(diff)),
    }


def sequential_comparison(accuracy, decision, rule, alpha=None, outcome="prob") -> dict:
    """A paired check of two arms, ``(a, b)`` tuples of per-seed values in pairs.

    ``accuracy``: the two arms' test accuracy, reported (``diff``, ``ci95``:
    the anytime-valid 95% interval, valid whenever the check stopped);
    ``decision``: the outcome the verdict is decided on (``decision``:
    :func:`transferscope.compute.sequential.paired_verdict` at ``alpha``).
    """
    (a, b), (da, db) = accuracy, decision
    acc = paired_verdict(a, b, StoppingRule(min_effect=0.0), alpha=0.05)
    decided = paired_verdict(da, db, rule, alpha)
    return {
        "diff": acc["diff"],
        "ci95": acc["interval"],
        "wins": acc["wins"],
        "losses": acc["losses"],
        "num_pairs": acc["num_pairs"],
        "verdict": decided["verdict"],
        "decision": dict(decided, outcome=outcome),
    }


def arm_summary(per_seed) -> tuple[float, float, float]:
    """An arm's mean accuracy with its anytime-valid 95% interval."""
    return confidence_sequence(np.asarray(per_seed, np.float64), 0.05)


def summarize_curation(
    plan: CurationPlan,
    accuracy: np.ndarray,
    class_names: Sequence[str] | None = None,
    decision: np.ndarray | None = None,
    rule: StoppingRule | None = None,
    outcome: str = "accuracy",
) -> dict:
    """Accuracy per arm, and the curation's verdicts decided sequentially.

    Args:
        plan: a :class:`CurationPlan`
        accuracy: ``(R,)`` target test accuracy of each planned row
        decision: ``(R,)`` the outcome the verdicts are decided on (default: accuracy)
        rule: the :class:`StoppingRule` (its level, minimal effect)
        outcome: the name of the decision outcome, for the record

    Each class removed alone is decided at ``alpha / m`` (Bonferroni over the
    ``m`` classes), so the chance of any false "confirmed" among them is at
    most ``alpha``; every other verdict at ``alpha``. All intervals are
    anytime-valid: they hold at the seed count the check stopped at.

    Returns:
        a JSON-serialisable dict (stored in the run, drawn by the plots)
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    dec = acc if decision is None else np.asarray(decision, dtype=np.float64)
    rule = rule or StoppingRule()
    names = list(class_names) if class_names is not None else None

    def name_of(c):
        return names[c] if names else c

    cells = []
    for c in plan.cells:
        per_seed = acc[c["rows"]]
        # fixed-size arms: Student's t; the others stopped with the check: anytime-valid
        mean, lo, hi = mean_ci(per_seed) if c.get("sweep") else arm_summary(per_seed)
        cells.append(
            {
                "arm": c["arm"],
                "k": c["k"],
                "accuracy": mean,
                "ci95": [lo, hi],
                "per_seed": per_seed.round(6).tolist(),
                **({"class": name_of(c["class"])} if "class" in c else {}),
            }
        )
    k_cur = len(plan.removed)
    full = plan.cell("full", 0)["rows"]

    def versus(rows, alpha=None, base=full):
        base = base[: len(rows)]  # the sweep's arms have the first seeds only
        return sequential_comparison(
            (acc[rows], acc[base]), (dec[rows], dec[base]), rule, alpha, outcome
        )

    def sweep_point(c):
        if not c.get("sweep"):
            return versus(c["rows"])
        # a fixed number of seeds: the paired t-interval, no verdict
        point = paired_comparison(acc[c["rows"]], acc[full[: len(c["rows"])]])
        return dict(point, verdict=None, interval_kind="fixed-sample t")

    each_cells = [c for c in plan.cells if c["arm"] == "each"]
    each_alpha = rule.alpha / max(1, len(each_cells))
    each = [{"class": name_of(c["class"]), **versus(c["rows"], each_alpha)} for c in each_cells]
    curated = plan.cell("curated", k_cur)["rows"]
    return {
        "each_removed_vs_full": each,
        "confirmed": [row["class"] for row in each if row["verdict"] == "confirmed"],
        "removed": [name_of(c) for c in plan.removed],
        "num_removed": k_cur,
        "num_seeds": len(full),
        "stopping_rule": rule.to_dict(),
        "outcome": outcome,
        "cells": cells,
        "curated_vs_full": versus(curated),
        "curated_vs_random": versus(curated, base=plan.cell("random", k_cur)["rows"]),
        "most_helpful_removed_vs_full": versus(plan.cell("helpful_first", k_cur)["rows"]),
        # every order at every k against the full set, paired by seed
        "vs_full": [
            {"arm": c["arm"], "k": c["k"], **sweep_point(c)}
            for c in plan.cells
            if c["arm"] in ORDERS
        ],
    }


def curation_decided(summary) -> bool:
    """Whether a curation check can stop: each class removed alone and the curated
    set against the full set are decided (the other comparisons are reported
    at the same stopping point, with intervals that hold there)."""
    primary = [*summary["each_removed_vs_full"], summary["curated_vs_full"]]
    return all(row["verdict"] != "undecided" for row in primary)


# --- example-level curation: remove images, not classes ------------------------

SAMPLE_ARMS = ("full", "curated", "random")


def plan_sample_curation(num_samples: int, removed: Sequence[int], num_seeds: int, seed: int = 0):
    """``(masks, seeds, arms)`` of an example-level curation check: for each seed,
    the full pretraining set, the set without the ``removed`` images, and the set
    without as many images drawn at random (a new draw per seed).

    ``masks`` is ``(R, N)`` over the pretraining images; rows that share a seed
    pair up (same initialisation, only the images differ).
    """
    removed = np.unique(np.asarray(removed, dtype=np.int64))
    check_int(num_seeds, "num_seeds", 2, 1000)
    check_int(len(removed), "the number of images removed", 1, num_samples - 1)
    masks, seeds, arms = [], [], []
    for s in range(num_seeds):
        rng = np.random.default_rng([seed, s, len(removed)])
        drawn = rng.choice(num_samples, len(removed), replace=False)
        for arm, out in (("full", []), ("curated", removed), ("random", drawn)):
            mask = np.ones(num_samples, dtype=bool)
            mask[out] = False
            masks.append(mask)
            seeds.append(s)
            arms.append(arm)
    return np.array(masks), np.array(seeds, dtype=np.int64), arms


def summarize_sample_curation(
    arms, seeds, accuracy, decision=None, rule: StoppingRule | None = None, outcome="accuracy"
) -> dict:
    """Accuracy per arm (mean, anytime-valid 95% interval) and the curated set's
    verdicts against the full set and against random removal, decided on
    ``decision`` (default: accuracy) by ``rule``."""
    arms, seeds = np.asarray(arms), np.asarray(seeds)
    accuracy = np.asarray(accuracy, np.float64)
    decision = accuracy if decision is None else np.asarray(decision, np.float64)
    rule = rule or StoppingRule()
    order = {}
    for arm in SAMPLE_ARMS:
        rows = np.flatnonzero(arms == arm)
        order[arm] = rows[np.argsort(seeds[rows])]
    cells = []
    for arm in SAMPLE_ARMS:
        mean, lo, hi = arm_summary(accuracy[order[arm]])
        cells.append({"arm": arm, "accuracy": mean, "ci95": [lo, hi]})

    def versus(a, b):
        ra, rb = order[a], order[b]
        return sequential_comparison(
            (accuracy[ra], accuracy[rb]), (decision[ra], decision[rb]), rule, None, outcome
        )

    return {
        "cells": cells,
        "num_seeds": int(len(order["full"])),
        "stopping_rule": rule.to_dict(),
        "outcome": outcome,
        "curated_vs_full": versus("curated", "full"),
        "curated_vs_random": versus("curated", "random"),
    }


def sample_curation_decided(summary) -> bool:
    """Whether an image curation check can stop: the curated set against the full set
    is decided."""
    return summary["curated_vs_full"]["verdict"] != "undecided"
