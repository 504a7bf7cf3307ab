"""How noisy is a retraining comparison per seed, for each outcome it could be decided on?

Reads the retraining stores that the demo's curation and failure checks left
under the demo run's output directory (no training), pairs every arm with the
full pretraining set by model seed, and reports for each outcome:

- the paired spread per seed (standard deviation of the per-seed differences);
- the mean difference (the effect);
- the standardised effect ``|mean| / spread``, which sets the seeds a decision
  needs (about ``1 / effect^2``): halving the spread at the same effect means
  4x fewer seeds.

Outcomes, each the mean over the target's test samples of one model:
``accuracy`` (0/1), ``prob`` (the correct class's probability), ``log_prob``
(its logarithm, minus the log-loss) and ``margin`` (correct logit minus the
best other).

    .venv/bin/python benchmarks/paired_noise.py            # after `transferscope demo`

Writes benchmarks/results/paired_noise.json (or ``--results``).
"""

import argparse
import glob
import json
import os
import sys

import numpy as np

OUTCOMES = ("accuracy", "prob", "log_prob", "margin")


def per_model(store, outcome):
    if outcome == "accuracy":
        values = store.outputs("correct", only_completed=False)
    elif outcome == "log_prob":
        values = np.log(np.clip(store.outputs("prob", only_completed=False), 1e-7, 1.0))
    else:
        values = store.outputs(outcome, only_completed=False)
    return values.astype(np.float64).mean(axis=1)


def arms_by_seed(folder):
    """``{mask bytes: {seed: {outcome: value}}}`` over every complete store under ``folder``."""
    from transferscope.compute.store import ResultsStore

    arms = {}
    for spec in glob.glob(os.path.join(folder, "**", "spec.json"), recursive=True):
        store = ResultsStore.load(os.path.dirname(spec))
        done = np.asarray(store.completed, bool)
        seeds = store.spec["meta"]["seeds"]
        values = {o: per_model(store, o) for o in OUTCOMES}
        for i, (mask, seed) in enumerate(zip(store.masks, seeds)):
            if done[i]:
                cell = arms.setdefault(np.asarray(mask, bool).tobytes(), {})
                cell[int(seed)] = {o: float(values[o][i]) for o in OUTCOMES}
    return arms


def paired_rows(arms, names_of):
    full_key = next((k for k in arms if np.frombuffer(k, bool).all()), None)
    if full_key is None:
        return []
    full = arms[full_key]
    rows = []
    for key, by_seed in arms.items():
        if key == full_key:
            continue
        seeds = sorted(set(by_seed) & set(full))
        if len(seeds) < 4:
            continue
        row = {"removed": names_of(np.flatnonzero(~np.frombuffer(key, bool))), "seeds": len(seeds)}
        for o in OUTCOMES:
            d = np.array([by_seed[s][o] - full[s][o] for s in seeds])
            row[o] = {
                "effect": float(d.mean()),
                "spread": float(d.std(ddof=1)),
                "standardised": float(abs(d.mean()) / d.std(ddof=1)),
            }
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--results", default=os.path.join("benchmarks", "results", "paired_noise.json")
    )
    parser.add_argument("--label", default="demo", help="name of this measurement in the file")
    args = parser.parse_args(argv)

    from transferscope import demo
    from transferscope.influence_run import load_influence_run

    _, config = load_influence_run(demo.TARGET_NAME, demo.RUN_KEY)
    root = config.output_dir
    classes = None
    out = {"label": args.label, "checks": {}}
    for check in ("curation", "failures"):
        arms = arms_by_seed(os.path.join(root, check))
        if not arms:
            continue
        num = len(np.frombuffer(next(iter(arms)), bool))
        if classes is None:
            classes = demo_classes(num)

        def names(idx, classes=classes):
            return [classes[i] for i in idx] if len(idx) <= 3 else f"{len(idx)} classes"

        out["checks"][check] = paired_rows(arms, names)
    rows = [row for check_rows in out["checks"].values() for row in check_rows]
    for check, check_rows in out["checks"].items():
        for row in check_rows:
            figures = "  ".join(
                f"{o} {100 * row[o]['effect']:+.2f}/{100 * row[o]['spread']:.2f}" for o in OUTCOMES
            )
            print(f"{check:9s} {str(row['removed']):>22s}  seeds {row['seeds']:3d}  {figures}")
    out["in_accuracy_points"] = accuracy_equivalent(rows)
    print("paired spread per seed in accuracy-equivalent points (pooled over arms):")
    for o, fig in out["in_accuracy_points"].items():
        print(
            f"  {o:9s} {fig['spread_points']:.2f} points (slope {fig['slope']:.3g} per accuracy "
            f"point; {fig['relative_to_accuracy']:.2f}x accuracy's spread)"
        )
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    previous = {}
    if os.path.exists(args.results):
        with open(args.results) as f:
            previous = json.load(f)
    previous[args.label] = out
    with open(args.results, "w") as f:
        json.dump(previous, f, indent=1)
    print(f"written {args.results}")


def accuracy_equivalent(rows):
    """Each outcome's paired spread in accuracy points: its arm effects regressed on
    accuracy's through the origin give the points one unit of it is worth, and
    the pooled spread divided by that slope is comparable across outcomes (a
    2-point accuracy effect at spread s needs about (2.8 s / 2)^2 seeds)."""
    acc = np.array([row["accuracy"]["effect"] for row in rows])
    figures = {}
    for o in OUTCOMES:
        eff = np.array([row[o]["effect"] for row in rows])
        slope = float((eff @ acc) / (acc @ acc))
        pooled = float(np.sqrt(np.mean([row[o]["spread"] ** 2 for row in rows])))
        figures[o] = {"slope": slope / 100, "spread_points": pooled / abs(slope) * 100}
    for o in OUTCOMES:
        figures[o]["relative_to_accuracy"] = (
            figures[o]["spread_points"] / figures["accuracy"]["spread_points"]
        )
    return figures


def demo_classes(num):
    from transferscope import demo
    from transferscope.influence_run import InfluenceRun

    names = list(InfluenceRun.load(demo.TARGET_NAME, demo.RUN_KEY).results.classes)
    return names if len(names) == num else [str(i) for i in range(num)]


if __name__ == "__main__":
    sys.exit(main())
