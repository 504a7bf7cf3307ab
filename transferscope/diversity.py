"""``plan_class_diversity``: how many pretraining classes for a fixed budget.

Implements "On the Trade-off of Intra-/Inter-class Diversity for Supervised
Pre-training" (Zhang et al., NeurIPS 2023) with the protocol of a
class-influence run: sweep the number of classes ``K`` (with ``n = N / K``
samples each) at small budgets ``N``, fit the error surface, predict the best
``K`` for the full budget, check it against a real sweep there, and save the
plan as a view of the pretraining dataset.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Sequence

import numpy as np

from . import compute as tsc
from . import views as tsv
from .compute import diversity as dv
from .compute.neighbors import centroid_samples
from .embeddings import from_run
from .influence_run import InfluenceRun, prepare_executor, run_with_progress
from .plots import diversity_plotly
from .results import JobResults
from .retraining import DEFAULT_MIN_EFFECT, describe_check, retrain_in_rounds, stopping_rule
from .runs import commit_run, open_write
from .views import DatasetLike, Progress, TransferScopeError

logger = logging.getLogger(__name__)

CLASS_CHOICES = ("influence", "random")
SAMPLE_CHOICES = ("coverage", "random")


class DiversityResults(JobResults):
    """The plan of :func:`plan_class_diversity` (fit, per-budget optima, the
    predicted ``K*`` and its check at the full budget)."""

    def describe(self):
        return describe_diversity(self)

    def plotly(self):
        return diversity_plotly(self)


@tsv.renamed_keywords(run_key="influence_key")
def plan_class_diversity(
    dataset: DatasetLike,
    influence_key: str,
    key: str = "diversity",
    budgets: Sequence[int] | None = None,
    full_budget: int | None = None,
    num_points: int = 4,
    num_seeds: int = 3,
    class_choice: str = "influence",
    sample_choice: str = "coverage",
    verify: bool = True,
    device: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress = None,
    executor: str | tsc.Executor = "local",
    executor_options: dict | None = None,
    max_seeds: int = tsc.sequential.DEFAULT_MAX_SEEDS,
    round_seeds: int = tsc.sequential.DEFAULT_ROUND_SEEDS,
    alpha: float = tsc.sequential.DEFAULT_ALPHA,
    min_effect: float = DEFAULT_MIN_EFFECT,
) -> DiversityResults:
    """Plans the number of classes ``K*`` and samples per class ``n*`` for a budget.

    With the protocol of class-influence run ``influence_key`` (architecture,
    transfer, target task), trains ``num_seeds`` models for each ``K`` of a
    log grid (``num_points`` values, ``n = N // K``) at each of ``budgets``
    (two or more small budgets ``N``), each model on ``K`` random classes
    with at least ``n`` samples and ``n`` random samples of each, for about as
    many steps as a full-budget model. Fits ``err = a K^-p + b n^-q + c``
    (bootstrap intervals), reports the best ratio ``r* = K/n`` per budget
    (from the fit and from each budget's own sweep) and predicts ``K*`` for
    ``full_budget``. With ``verify``, also sweeps the full budget (``num_seeds``
    per point) and checks the plan: trains at the predicted ``K*``, at all
    classes, and on the plan itself, seed after seed in rounds of
    ``round_seeds`` until the verdict of the plan against all classes
    (paired by seed) settles or ``max_seeds`` are spent; ``alpha`` and
    ``min_effect`` as in :func:`transferscope.evaluate_curation`.

    The plan (saved view ``<key>_plan`` on the pretraining dataset): ``K*``
    classes, most helpful first by the run's aggregate influence
    (``class_choice="influence"``) or at random (``"random"``), among the
    classes with at least ``n*`` samples; ``n*`` samples per class nearest to
    the centroids of a FAISS k-means on the run's backbone embeddings
    (``sample_choice="coverage"``) or at random.

    ``progress``, ``executor`` and ``executor_options`` are as in
    :func:`transferscope.compute_class_influence`.

    Returns:
        a :class:`DiversityResults`: the summary dict stored in run ``key`` on
        the pretraining dataset, with ``describe()`` and ``plotly()``
    """
    run = InfluenceRun.load(dataset, influence_key)
    pretrain, target = run.datasets
    _check_plan_arguments(key, class_choice, sample_choice, num_points, num_seeds)
    stopping = stopping_rule(alpha, min_effect, round_seeds, max_seeds, "accuracy")
    view_name = f"{key}_plan"
    results = run.results
    labelled = run.labelled(unchanged_for="planning class diversity")
    class_names = list(results.classes)
    counts = collections.Counter(labelled.pre_labels)
    sizes = np.array([counts[c] for c in class_names])
    num_classes = len(class_names)

    try:
        budgets, full_budget = dv.check_budgets(budgets, full_budget, sizes)
        # --- the sweep: cells (budget, K, n, seed), only K the data allows ----
        grids, dropped = dv.feasible_grids(
            budgets + ([full_budget] if verify else []), sizes, num_points
        )
    except ValueError as e:
        raise TransferScopeError(str(e)) from e
    base = run.training_config_for(device)

    def epochs_for(N):  # about as many steps as a full-budget model
        return max(base.epochs, math.ceil(base.epochs * full_budget / N))

    cells = dv.sweep_cells(grids, num_seeds, epochs_for)
    runner = prepare_executor(executor, executor_options, base)
    with open_write(pretrain, key, "class_diversity", overwrite, []) as write:
        data = labelled.decode(base.image_size, base.channels, base.resize)
        labels = data.pretrain_labels  # class indices in the order of class_names
        store_root = os.path.join(results.config.output_dir, "diversity")
        run_cells = _cell_trainer(base, data, store_root, runner, progress)
        sweep = run_cells(cells, "sweep")
        per_budget, prediction = _fit_and_predict(
            sweep, budgets, grids, dropped, full_budget, sizes, class_names, seed
        )
        k_plan, n_plan = prediction["K_plan"], prediction["n_plan"]

        # --- the plan's samples ----------------------------------------------------
        influence = results.class_influence if class_choice == "influence" else None
        chosen = dv.plan_classes(sizes, n_plan, k_plan, influence, seed)
        plan_rows = _choose_samples(
            labels, chosen, n_plan, sample_choice, run, device, seed, labelled, data
        )
        plan_ids = [str(labelled.pre_ids[i]) for i in plan_rows]

        verification = None
        if verify:
            all_k = int((sizes >= full_budget // num_classes).sum())
            check = dict(k_plan=k_plan, n_plan=n_plan, plan_rows=plan_rows, all_k=all_k)
            verification, checked = _check_plan(
                sweep, per_budget, full_budget, check, epochs_for(full_budget), run_cells, stopping
            )
            sweep = sweep + checked

        summary = {
            "run_key": influence_key,  # stored under its 0.2 name
            "budgets": budgets,
            "per_budget": per_budget,
            "prediction": prediction,
            "verification": verification,
            "cells": [{k: v for k, v in c.items() if k != "sample_rows"} for c in sweep],
            "class_choice": class_choice,
            "sample_choice": sample_choice,
            "plan_classes": [class_names[i] for i in chosen],
            "num_seeds": num_seeds,
        }

        params = dict(run_key=influence_key, full_budget=full_budget, budgets=budgets)
        views = {view_name: lambda: pretrain.select(plan_ids)}
        commit_run(write, pretrain, "class_diversity", {}, {}, views, summary, params)
        return DiversityResults(summary)


def _check_plan(sweep, per_budget, full_budget, check, epochs, run_cells, stopping):
    """The plan against all classes (and the predicted K) at the full budget,
    round by round until the plan's verdict settles: ``(verification, cells)``."""
    checked = []

    def train_round(first, last):
        cells = dv.check_cells(
            full_budget,
            check["k_plan"],
            check["n_plan"],
            check["plan_rows"],
            check["all_k"],
            last,
            epochs,
            first,
        )
        checked.extend(run_cells(cells, "check"))

    def verify_plan(num_seeds):
        table = sweep + [c for c in checked if c["seed"] < num_seeds]
        return dv.verification_summary(table, per_budget, full_budget, check["all_k"], stopping)

    used = retrain_in_rounds(
        train_round,
        lambda n: verify_plan(n)["plan_vs_all_classes"]["verdict"] != "undecided",
        stopping,
    )
    verification = dict(verify_plan(used), num_seeds=used, stopping_rule=stopping.to_dict())
    return verification, checked


def _check_plan_arguments(key, class_choice, sample_choice, num_points, num_seeds):
    tsv.validate_run_key(key)
    if class_choice not in CLASS_CHOICES:
        raise TransferScopeError(f"class_choice must be one of {CLASS_CHOICES}")
    if sample_choice not in SAMPLE_CHOICES:
        raise TransferScopeError(f"sample_choice must be one of {SAMPLE_CHOICES}")
    tsv.check_count(num_points, "num_points", 3)
    tsv.check_count(num_seeds, "num_seeds", 2)


def _cell_trainer(base, data, store_root, runner, progress):
    """``run_cells(cells, name)``: trains the cells (resumable, one store per set
    of cells) and returns them with their test error."""
    engine = tsc.engine

    def run_cells(group, name):
        path = os.path.join(store_root, engine.cells_digest(group))
        store = engine.open_cells_store(path, base, data, group)
        run_with_progress(
            (
                store,
                lambda done: engine.run_diversity_cells(base, data, store, group, done, runner),
            ),
            progress,
            f"Training the diversity {name}",
        )
        accuracy = store.outputs("correct").mean(axis=1)
        return [dict(c, error=float(1 - a)) for c, a in zip(group, accuracy)]

    return run_cells


def _fit_and_predict(sweep, budgets, grids, dropped, full_budget, sizes, class_names, seed):
    """Fit on the small budgets, per-budget summaries, and the prediction for the
    full budget with the plan the data allows (``K_plan``, ``n_plan``)."""
    fit = dv.fit_small_budgets(sweep, budgets, seed)
    per_budget = dv.budget_summaries(sweep, grids, dropped, fit, seed)
    prediction = dv.predict_full_budget(fit, per_budget, budgets, full_budget)
    # the fit is the prediction when it converged; the pooled sweep ratio otherwise
    k_pred = prediction["K_from_fit"] or prediction["K_from_pooled_sweep_ratio"]
    try:
        k_plan, n_plan, excluded, adapted = dv.feasible_plan(k_pred, full_budget, sizes)
    except ValueError as e:
        raise TransferScopeError(str(e)) from e
    prediction.update(
        K_plan=k_plan,
        n_plan=n_plan,
        classes_too_small=[class_names[i] for i in excluded],
        adapted=adapted,
        invariance=dv.invariance_verdict(fit, per_budget, [int(N) for N in per_budget]),
    )
    return per_budget, prediction


def _choose_samples(labels, chosen, per_class, how, run, device, seed, labelled, data):
    rows = []
    rng = np.random.default_rng(seed)
    vectors = None
    if how == "coverage":
        vectors = from_run(run, device=device, labelled=labelled, data=data)[0].vectors
    for c in chosen:
        members = np.flatnonzero(labels == c)
        if how == "random" or len(members) <= per_class:
            rows.extend(rng.choice(members, per_class, replace=False))
            continue
        rows.extend(members[centroid_samples(vectors[members], per_class, seed)])
    return np.array(rows, dtype=np.int64)


def describe_diversity(summary):
    """Lines of text that report a plan and its check."""
    pred, ver = summary["prediction"], summary["verification"]
    lines = [
        "Best number of classes per budget (sweep: parabola in log K, 95% bootstrap CI; "
        "fit: a K^-p + b n^-q + c on the small budgets):"
    ]
    for N, row in summary["per_budget"].items():
        fit_k = f"{row['fit_best_K']:.1f}" if row["fit_best_K"] is not None else "-"
        lo, hi = row["sweep_best_K_ci95"]
        lines.append(
            f"  N = {int(N):>6d}: sweep K* = {row['sweep_best_K']:.1f} [{lo:.1f}, {hi:.1f}]"
            f"{'' if row['interior'] else ' (best grid point: no interior optimum)'}"
            f", ratio K/n = {row['sweep_best_ratio']:.2f} "
            f"[{lo**2 / int(N):.2f}, {hi**2 / int(N):.2f}]; fit K* = {fit_k}"
        )
    f = pred["fit"]
    lines.append(
        f"Fit: a={f['a']:.3g} p={f['p']:.3g} b={f['b']:.3g} q={f['q']:.3g} "
        f"c={f['c']:.3g}, rmse {f['rmse']:.4f}"
        + (
            ""
            if pred.get("fit_identified", pred["fit_converged"])
            else f" (not used: {pred['fit_message']})"
        )
    )
    ci = pred["K_from_fit_ci95"]
    lines.append(
        f"Full budget N = {pred['full_budget']}: predicted K* = "
        + (
            f"{pred['K_from_fit']:.1f} [{ci[0]:.1f}, {ci[1]:.1f}] (fit)"
            if pred["K_from_fit"]
            else "-"
        )
        + f", {pred['K_from_pooled_sweep_ratio']:.1f} (pooled sweep ratio); "
        f"plan: {pred['K_plan']} classes x {pred['n_plan']} samples"
    )
    inv = pred.get("invariance")
    if inv:
        lines.append(_describe_invariance(inv))
    if pred["adapted"]:
        lines.append(f"  adapted: {pred['adapted']}")
    if pred["classes_too_small"]:
        lines.append(
            f"  classes with fewer than {pred['n_plan']} samples, left out: "
            f"{pred['classes_too_small']}"
        )
    if ver:
        lines += [
            f"Check at the full budget: measured best K = {ver['measured_best_K']:.1f} "
            f"[{ver['measured_best_K_ci95'][0]:.1f}, {ver['measured_best_K_ci95'][1]:.1f}] "
            f"(best grid point K = {ver['measured_best_grid_K']})",
            f"  accuracy at the best grid K      {100 * ver['accuracy_at_best_grid_K']:.1f}%",
            f"  accuracy at the predicted K      {100 * ver['accuracy_at_predicted_K']:.1f}% "
            f"[{100 * ver['accuracy_at_predicted_K_ci95'][0]:.1f}, "
            f"{100 * ver['accuracy_at_predicted_K_ci95'][1]:.1f}] (random classes)",
            f"  accuracy of the plan             {100 * ver['accuracy_plan']:.1f}% "
            f"[{100 * ver['accuracy_plan_ci95'][0]:.1f}, {100 * ver['accuracy_plan_ci95'][1]:.1f}]"
            f" ({summary['class_choice']} classes, {summary['sample_choice']} samples)",
            f"  accuracy with all {ver['all_classes_K']} classes      "
            f"{100 * ver['accuracy_all_classes']:.1f}% "
            f"[{100 * ver['accuracy_all_classes_ci95'][0]:.1f}, "
            f"{100 * ver['accuracy_all_classes_ci95'][1]:.1f}]",
        ]
        for name, label in (
            ("plan_vs_all_classes", "plan - all classes"),
            ("predicted_K_vs_all_classes", "predicted K - all classes"),
        ):
            if ver.get(name):
                lines.append(describe_check(label, ver[name]))
        if ver.get("predicted_vs_best_grid_K_steps") is not None:
            lines.append(
                f"  predicted K {ver['predicted_K']} vs best grid K "
                f"{ver['measured_best_grid_K']}: "
                f"{ver['predicted_vs_best_grid_K_steps']:.1f} grid steps apart"
            )
    return lines


def _describe_invariance(inv):
    """One line: is the best ratio K/n the same at every budget?"""
    agree = "overlap" if inv["sweep_ratios_agree"] else "do not overlap"
    if "p_minus_q" not in inv:
        return (
            f"Invariance of the best ratio: undecided by the fit ({inv.get('fit_note', '')}); "
            f"the budgets' own ratio intervals {agree}"
        )
    d_lo, d_hi = inv["p_minus_q_ci95"]
    c_lo, c_hi = inv["ratio_change_over_span_ci95"]
    return (
        f"Invariance of the best ratio: p - q = {inv['p_minus_q']:+.2f} [{d_lo:+.2f}, "
        f"{d_hi:+.2f}]; across the {inv['budget_span']:.0f}x budget range the best ratio "
        f"changes by x{inv['ratio_change_over_span']:.2f} [{c_lo:.2f}, {c_hi:.2f}]: "
        f"{inv['fit_verdict']}; the budgets' own ratio intervals {agree}"
    )
