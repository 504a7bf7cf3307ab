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
from collections.abc import Sequence
import math
import os

import numpy as np

from . import compute as tsc
from . import views as tsv
from .compute import diversity as dv
from .compute.estimators import mean_ci
from .compute.neighbors import centroid_samples
from .embeddings import from_run
from .influence_run import InfluenceRun, prepare_executor, run_with_progress
from .plots import diversity_plotly
from .results import JobResults
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


def plan_class_diversity(
    dataset: DatasetLike,
    run_key: str,
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
    executor: str | tsc.LocalExecutor | tsc.RayExecutor = "local",
    executor_options: dict | None = None,
) -> DiversityResults:
    """Plans the number of classes ``K*`` and samples per class ``n*`` for a budget.

    With the protocol of class-influence run ``run_key`` (architecture,
    transfer, target task), trains ``num_seeds`` models for each ``K`` of a
    log grid (``num_points`` values, ``n = N // K``) at each of ``budgets``
    (two or more small budgets ``N``), each model on ``K`` random classes
    with at least ``n`` samples and ``n`` random samples of each, for about as
    many steps as a full-budget model. Fits ``err = a K^-p + b n^-q + c``
    (bootstrap intervals), reports the best ratio ``r* = K/n`` per budget
    (from the fit and from each budget's own sweep) and predicts ``K*`` for
    ``full_budget``. With ``verify``, also sweeps the full budget, trains at
    the predicted ``K*``, at all classes, and on the plan itself.

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
    run = InfluenceRun.load(dataset, run_key)
    pretrain, target = run.datasets
    tsv.validate_run_key(key)
    view_name = f"{key}_plan"
    if class_choice not in CLASS_CHOICES:
        raise TransferScopeError(f"class_choice must be one of {CLASS_CHOICES}")
    if sample_choice not in SAMPLE_CHOICES:
        raise TransferScopeError(f"sample_choice must be one of {SAMPLE_CHOICES}")
    tsv.check_count(num_points, "num_points", 3)
    tsv.check_count(num_seeds, "num_seeds", 2)
    results = run.results
    labelled = run.labelled(unchanged_for="planning class diversity")
    class_names = list(results.classes)
    counts = collections.Counter(labelled.pre_labels)
    sizes = np.array([counts[c] for c in class_names])
    num_classes = len(class_names)

    if full_budget is None:
        full_budget = int(num_classes * np.median(sizes) // 4)
    if budgets is None:
        budgets = [full_budget // 4, full_budget // 2]
    budgets = sorted(int(b) for b in budgets)
    if len(budgets) < 2 or len(set(budgets)) < 2:
        raise TransferScopeError(f"need at least two different small budgets; got {budgets}")
    if budgets[-1] >= full_budget:
        raise TransferScopeError(
            f"the small budgets {budgets} must lie below the full budget {full_budget}"
        )
    if full_budget > sizes.sum():
        raise TransferScopeError(
            f"the full budget {full_budget} exceeds the {int(sizes.sum())} pretraining samples"
        )

    # --- the sweep: cells (budget, K, n, seed), only K the data allows --------
    grids, dropped = {}, {}
    for N in budgets + ([full_budget] if verify else []):
        try:
            # the grid's few-classes end respects a typical class (the median
            # size); larger classes still count for feasibility below
            grid = dv.log_grid(N, num_classes, int(np.median(sizes)), num_points)
        except ValueError as e:
            raise TransferScopeError(str(e)) from e
        # K is feasible for N when K classes have at least N // K samples
        feasible = [K for K in grid if (sizes >= N // K).sum() >= K]
        dropped[N] = [K for K in grid if K not in feasible]
        if len(feasible) < 3:
            raise TransferScopeError(
                f"budget {N}: only {len(feasible)} feasible points on the K grid {grid} "
                f"(need 3); classes with fewer than N/K samples rule out {dropped[N]}"
            )
        grids[N] = feasible
    base = run.training_config_for(device)

    def epochs_for(N):  # about as many steps as a full-budget model
        return max(base.epochs, math.ceil(base.epochs * full_budget / N))

    cells = [
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
    runner = prepare_executor(executor, executor_options, base)
    with open_write(pretrain, key, "class_diversity", overwrite, []) as write:
        data = labelled.decode(base.image_size, base.channels)
        labels = data.pretrain_labels  # class indices in the order of class_names
        store_root = os.path.join(results.config.output_dir, "diversity")

        def run_cells(group, name):
            engine = tsc.engine
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

        sweep = run_cells(cells, "sweep")

        # --- fit on the small budgets, predict the full budget --------------------
        small = [c for c in sweep if c["budget"] in budgets]
        K_ = np.array([c["classes"] for c in small], float)
        n_ = np.array([c["per_class"] for c in small], float)
        err = np.array([c["error"] for c in small])
        fit = dv.fit_power_law(K_, n_, err, seed=seed)
        per_budget = {}
        for N, grid in grids.items():
            rows = [c for c in sweep if c["budget"] == N]
            k = np.array([c["classes"] for c in rows], float)
            e = np.array([c["error"] for c in rows])
            k_star, interior = dv.parabola_optimum(k, e)
            lo, hi = dv.bootstrap_parabola(k, e, seed=seed)
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
        ratios = [per_budget[str(N)]["sweep_best_ratio"] for N in budgets]
        pooled_ratio = float(np.exp(np.mean(np.log(ratios))))
        prediction = {
            "full_budget": full_budget,
            "fit_converged": fit.converged,
            "fit_message": fit.message,
            "fit": {"a": fit.a, "p": fit.p, "b": fit.b, "q": fit.q, "c": fit.c, "rmse": fit.rmse},
            "K_from_fit": fit.best_classes(full_budget) if fit.converged else None,
            "K_from_fit_ci95": fit.interval(lambda t: fit.best_classes(full_budget, t))
            if fit.converged
            else None,
            "K_from_pooled_sweep_ratio": math.sqrt(pooled_ratio * full_budget),
            "pooled_sweep_ratio": pooled_ratio,
        }
        # the fit is the prediction when it converged; the pooled sweep ratio otherwise
        k_pred = prediction["K_from_fit"] or prediction["K_from_pooled_sweep_ratio"]
        k_plan, n_plan, excluded, adapted = _feasible_plan(k_pred, full_budget, sizes)
        prediction.update(
            K_plan=k_plan,
            n_plan=n_plan,
            classes_too_small=[class_names[i] for i in excluded],
            adapted=adapted,
        )

        # --- the plan's samples ----------------------------------------------------
        eligible = np.flatnonzero(sizes >= n_plan)
        if class_choice == "influence":
            order = [
                i for i in np.argsort(-results.class_influence, kind="stable") if i in eligible
            ]
        else:
            order = list(np.random.default_rng(seed).permutation(eligible))
        chosen = order[:k_plan]
        plan_rows = _choose_samples(
            labels, chosen, n_plan, sample_choice, run, device, seed, labelled, data
        )
        plan_ids = [str(labelled.pre_ids[i]) for i in plan_rows]

        verification = None
        if verify:
            extra = [
                {
                    "budget": full_budget,
                    "classes": k_plan,
                    "per_class": n_plan,
                    "seed": s,
                    "epochs": epochs_for(full_budget),
                    "arm": "predicted_K",
                }
                for s in range(num_seeds)
            ]
            all_k = int((sizes >= full_budget // num_classes).sum())
            extra += [
                {
                    "budget": full_budget,
                    "classes": all_k,
                    "per_class": full_budget // all_k,
                    "seed": s,
                    "epochs": epochs_for(full_budget),
                    "arm": "all_classes",
                }
                for s in range(num_seeds)
            ]
            extra += [
                {
                    "budget": full_budget,
                    "classes": k_plan,
                    "per_class": n_plan,
                    "seed": s,
                    "epochs": epochs_for(full_budget),
                    "arm": "plan",
                    "sample_rows": [int(i) for i in plan_rows],
                }
                for s in range(num_seeds)
            ]
            table = sweep + run_cells(extra, "check")
            full = [c for c in table if c["budget"] == full_budget and c["arm"] == "sweep"]
            by_k = {}
            for c in full:
                by_k.setdefault(c["classes"], []).append(c["error"])
            best_grid_k = min(by_k, key=lambda k: np.mean(by_k[k]))

            def acc(arm):
                mean, lo, hi = mean_ci([1 - c["error"] for c in table if c["arm"] == arm])
                return mean, [lo, hi]

            verification = {
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
            }
            sweep = table

        summary = {
            "run_key": run_key,
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

        params = dict(run_key=run_key, full_budget=full_budget, budgets=budgets)
        commit_run(
            write,
            pretrain,
            "class_diversity",
            {},
            {},
            {view_name: lambda: pretrain.select(plan_ids)},
            summary,
            params,
        )
        return DiversityResults(summary)


def _feasible_plan(k_pred, budget, sizes):
    """Rounds ``K*`` and lowers it until enough classes hold ``n* = N // K*`` samples."""
    k = int(np.clip(round(k_pred), 2, len(sizes)))
    adapted = None
    while True:
        n = budget // k
        enough = int((sizes >= n).sum())
        if enough >= k:
            break
        k_new = k + 1 if k < len(sizes) else k - 1  # more classes need fewer samples each
        adapted = (
            f"K*={k} needs {k} classes with {n} samples but only {enough} have "
            f"them; using K={k_new}"
        )
        if k_new == k or k_new > len(sizes):
            raise TransferScopeError(f"no K fits budget {budget}: " + adapted)
        k = k_new
    excluded = np.flatnonzero(sizes < n).tolist()
    return k, n, excluded, adapted


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
        + ("" if pred["fit_converged"] else f" (not used: {pred['fit_message']})")
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
    return lines
