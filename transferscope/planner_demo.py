"""The class-count planner's demo: is the best ratio K/n the same at every budget?

``transferscope demo --planner`` (Zhang et al., NeurIPS 2023): a pretraining
set of 48 glyph classes with 520 images each, so the budgets can span 16x
(N = 160 to 2,560) with the K grid bracketing the optimum; the demo's
handwritten digits as the target. It trains a small class-influence run for
the protocol (16 balanced models), then the planner at four small budgets
and the full one, 8 seeds per grid point, random classes and samples (the
paper's protocol), and reports:

- each budget's best ratio ``K/n`` with its interval, and whether they agree;
- ``p - q`` of the fit ``err = a K^-p + b n^-q + c`` with its interval, and by
  how much the best ratio changes across the budgets (the invariance holds
  exactly when ``p = q``);
- the predicted against the measured best ``K`` at the full budget;
- the plan's accuracy against using every class at the same budget (the
  paper's "default class count"), paired by seed.

The report goes to ``<data dir>/planner_report.json``; the README's planner
table is :func:`planner_table` of it.
"""

import json
import os
import time

import fiftyone as fo
from PIL import Image

from . import demo_data
from .demo import data_dir, load_or_build_demo
from .diversity import plan_class_diversity
from .influence import compute_class_influence

PLANNER_PRETRAIN_NAME = "transferscope-demo-glyphs-planner"
PLANNER_RUN_KEY = "demo_planner_influence"
PLANNER_KEY = "demo_planner"
PLANNER_DATA = dict(num_classes=48, per_class=520)
# budgets 160 .. 2,560: a 16x range; 8 seeds per point to tell neighbouring K apart
PLANNER = dict(
    budgets=[160, 320, 640, 1280], full_budget=2560, num_points=5, num_seeds=8, max_seeds=16
)
# the protocol's run: its models are not what the planner measures
PROTOCOL_RUN = dict(num_models=16, design="balanced", holdout_models=0)
PLANNER_DEMO_VERSION = 1


def load_or_build_planner_pretraining(root=None, rebuild=False):
    """The planner's pretraining dataset, built only when missing or stale."""
    root = os.path.abspath(root or data_dir())
    spec = {"version": PLANNER_DEMO_VERSION, **PLANNER_DATA, "root": root}
    if not rebuild and fo.dataset_exists(PLANNER_PRETRAIN_NAME):
        ds = fo.load_dataset(PLANNER_PRETRAIN_NAME)
        if ds.info.get("transferscope_planner_demo") == spec and len(ds):
            if os.path.exists(ds.first().filepath):
                return ds
        ds.delete()
    names, images, labels = demo_data.make_planner_glyphs(**PLANNER_DATA)
    folder = os.path.join(root, "planner_glyphs")
    os.makedirs(folder, exist_ok=True)
    samples = []
    for i, (img, label) in enumerate(zip(images, labels)):
        path = os.path.join(folder, f"{i:05d}.png")
        Image.fromarray(img).save(path)
        samples.append(fo.Sample(filepath=path, ground_truth=fo.Classification(label=names[label])))
    ds = fo.Dataset(PLANNER_PRETRAIN_NAME, persistent=True)
    ds.add_samples(samples, progress=False)
    ds.info = {"transferscope_planner_demo": spec}
    ds.save()
    return ds


def run_planner_demo(out=print):
    """Builds the planner's data (if needed), plans, checks; prints and saves the report."""
    t0 = time.perf_counter()
    _, target = load_or_build_demo()
    pretrain = load_or_build_planner_pretraining()
    out(
        f"Planner demo: {pretrain.name}: {len(pretrain)} glyph images, "
        f"{PLANNER_DATA['num_classes']} classes x {PLANNER_DATA['per_class']}; target "
        f"{target.name}; budgets {PLANNER['budgets']} -> {PLANNER['full_budget']}, "
        f"{PLANNER['num_seeds']} seeds per point"
    )
    compute_class_influence(pretrain, target, PLANNER_RUN_KEY, overwrite=True, **PROTOCOL_RUN)
    summary = plan_class_diversity(
        target,
        PLANNER_RUN_KEY,
        key=PLANNER_KEY,
        class_choice="random",
        sample_choice="random",
        overwrite=True,
        **PLANNER,
    )
    out("\n".join(summary.describe()))
    report = planner_report(summary, seconds=time.perf_counter() - t0)
    path = os.path.join(data_dir(), "planner_report.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    out("\n" + planner_table(report))
    out(f"(report: {path})")
    return summary, report


def planner_report(summary, seconds=None):
    """The figures the README quotes, from a planner summary."""
    pred, ver = summary["prediction"], summary["verification"]
    inv = pred["invariance"]
    per_budget = {}
    for N, row in summary["per_budget"].items():
        lo, hi = row["sweep_best_K_ci95"]
        per_budget[N] = {
            "best_K": row["sweep_best_K"],
            "best_K_ci95": [lo, hi],
            "interior": row["interior"],
            "best_ratio": row["sweep_best_ratio"],
            "best_ratio_ci95": [lo**2 / int(N), hi**2 / int(N)],
        }
    return {
        "budgets": summary["budgets"],
        "full_budget": pred["full_budget"],
        "num_seeds": summary["num_seeds"],
        "models": len(summary["cells"]),
        "minutes": None if seconds is None else round(seconds / 60, 1),
        "per_budget": per_budget,
        "fit": pred["fit"],
        "fit_converged": pred["fit_converged"],
        "invariance": inv,
        "predicted_K": pred["K_from_fit"] or pred["K_from_pooled_sweep_ratio"],
        "predicted_K_ci95": pred["K_from_fit_ci95"],
        "K_plan": pred["K_plan"],
        "n_plan": pred["n_plan"],
        "measured_best_K": ver["measured_best_K"],
        "measured_best_K_ci95": ver["measured_best_K_ci95"],
        "measured_best_grid_K": ver["measured_best_grid_K"],
        "grid_steps_apart": ver["predicted_vs_best_grid_K_steps"],
        "accuracy_plan": ver["accuracy_plan"],
        "accuracy_all_classes": ver["accuracy_all_classes"],
        "all_classes_K": ver["all_classes_K"],
        "plan_vs_all_classes": ver["plan_vs_all_classes"],
    }


def _ci(lo, hi, fmt="{:.2f}"):
    return f"[{fmt.format(lo)}, {fmt.format(hi)}]"


def planner_table(report):
    """The README's planner table (Markdown), from a :func:`planner_report`."""
    rows = []
    for N, row in report["per_budget"].items():
        edge = "" if row["interior"] else " (at a grid end)"
        rows.append(
            f"| best K/n at N = {int(N):,} | {row['best_ratio']:.2f} "
            f"{_ci(*row['best_ratio_ci95'])}: K = {row['best_K']:.1f}{edge} |"
        )
    inv = report["invariance"]
    agree = "overlap" if inv["sweep_ratios_agree"] else "do not overlap"
    rows.append(f"| do the budgets' intervals agree? | they {agree} |")
    f = report["fit"]
    if "p_minus_q" in inv:
        rows.append(
            f"| fit on N = {', '.join(str(b) for b in report['budgets'])} | "
            f"p = {f['p']:.2f}, q = {f['q']:.2f}; p - q = {inv['p_minus_q']:+.2f} "
            f"{_ci(*inv['p_minus_q_ci95'], fmt='{:+.2f}')} |"
        )
        rows.append(
            f"| best K/n across the {inv['budget_span']:.0f}x range, from the fit | changes "
            f"x{inv['ratio_change_over_span']:.2f} {_ci(*inv['ratio_change_over_span_ci95'])}: "
            f"**{inv['fit_verdict']}** |"
        )
    else:
        rows.append(f"| fit | did not converge: {inv.get('fit_note', '')}; **undecided** |")
    ci = report["predicted_K_ci95"]
    pred_ci = f" {_ci(*ci, fmt='{:.1f}')}" if ci else ""
    steps = report["grid_steps_apart"]
    rows.append(
        f"| best K at N = {report['full_budget']:,}: predicted / measured | "
        f"{report['predicted_K']:.1f}{pred_ci} (plan: {report['K_plan']} x "
        f"{report['n_plan']}) / {report['measured_best_K']:.1f} "
        f"{_ci(*report['measured_best_K_ci95'], fmt='{:.1f}')}; "
        f"the prediction {steps:.1f} grid steps from the best grid K "
        f"({report['measured_best_grid_K']}) |"
    )
    gain = report["plan_vs_all_classes"]
    rows.append(
        f"| accuracy at N = {report['full_budget']:,}: plan / all {report['all_classes_K']} "
        f"classes | {100 * report['accuracy_plan']:.1f}% / "
        f"{100 * report['accuracy_all_classes']:.1f}%: {100 * gain['diff']:+.1f} points "
        f"{_ci(100 * gain['ci95'][0], 100 * gain['ci95'][1], fmt='{:+.1f}')}, paired by seed"
        + (f": **{gain['verdict']}** ({gain['num_pairs']} seeds)" if "verdict" in gain else "")
        + " |"
    )
    minutes = f", {report['minutes']} min" if report.get("minutes") is not None else ""
    rows.append(f"| cost | {report['models']} models{minutes} on this 2-core CPU |")
    return "\n".join(["| | measured |", "|---|---|", *rows])
