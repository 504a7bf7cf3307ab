"""Subset designs with real training: interval width, reliability, LDS, the planted class.

Trains, on the demo's data with the demo's protocol (resnet_small width 16,
16x16, 4 epochs, linear probe; target function: correct-class probability),
``--models`` subset models for each design of ``compute_class_influence``:

    orthogonal    folded Hadamard blocks (the default; 144 models per block
                  for the demo's 68 classes)
    independent   the paper's independent random halves
    pairs         complementary pairs (the default before 0.2)

plus ``--holdout`` held-out models on independent random halves, shared by
all designs, for the linear datamodeling score. Per design, at each model
count (the first M models of its run), on the per-class influence averaged
over the test split:

- the mean 95% interval half-width, with the design's default estimator
  ("auto") and with the paper's difference of means;
- split-half reliability (Spearman of two disjoint halves: whole blocks or
  pairs kept together) and the standard deviation of the split-half
  z-scores (about 1 when the standard errors are right);
- the linear datamodeling score on the held-out models;
- the planted harmful class ``bold``: its rank, interval and q-value, and
  over random draws of m models (whole pairs kept together), how often it
  is the most harmful class, and the models needed for 90% of draws;
- the models the default design needs for the paper's interval width:
  ``(width_default / width_paper)^2`` at the same M (widths scale as
  ``1/sqrt(M)``).

    .venv/bin/python benchmarks/subset_designs.py            # 288 models per design

Models are stored (resumable) under --out; results go to
benchmarks/results/subset_designs.json.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from ray_benchmark import config_for, demo_transfer_data  # noqa: E402  (the demo's data)

DESIGNS = ("orthogonal", "independent", "pairs")
DRAW_SIZES = (16, 24, 32, 48, 64, 96, 144)


def train(data, config, out_dir, holdout):
    """Trains (or resumes) one design's store; ``holdout``: its held-out store instead."""
    from transferscope import compute as tsc

    if holdout:
        store = tsc.open_holdout_store(os.path.join(out_dir, "holdout"), config, data)
        run = tsc.run_holdout_models
        name = "holdout"
    else:
        store = tsc.open_store(os.path.join(out_dir, config.design), config, data)
        run = tsc.run_subset_models
        name = config.design
    start = time.perf_counter()
    trained = run(
        config,
        data,
        store,
        on_model_done=lambda i, done, total: print(f"\r{name}: {done}/{total}", end="", flush=True),
    )
    print()
    return store, len(trained), time.perf_counter() - start


def summarize(masks, y, y_matrix, held_masks, held_y, block_size, bold):
    from transferscope import compute as tsc

    out = {}
    for estimator in ("auto", "difference_of_means"):
        agg = tsc.aggregate_influence(masks, y, estimator=estimator)
        half = (agg.ci_high - agg.ci_low) / 2
        order = np.argsort(agg.influence, kind="stable")
        harmful = np.flatnonzero((agg.influence < 0) & (agg.q_value < 0.1))
        out[estimator] = {
            "estimator_used": agg.estimator,
            "se_method": agg.se_method,
            "mean_ci_half_width": float(half.mean()),
            "bold_rank_from_most_negative": int(np.flatnonzero(order == bold)[0]) + 1,
            "bold_influence": float(agg.influence[bold]),
            "bold_ci95": [float(agg.ci_low[bold]), float(agg.ci_high[bold])],
            "bold_q_value": float(agg.q_value[bold]),
            "harmful_at_q_0.1": int(len(harmful)),
            "mean_influence_over_classes": float(agg.influence.mean()),
        }
        split = tsc.split_half(masks, y, block_size, estimator)
        out[estimator]["split_half_spearman"] = split["spearman"]
        out[estimator]["split_half_z_sd"] = split["z_sd"]
        out[estimator]["split_halves"] = split["halves"]
        lds = tsc.linear_datamodeling_score(masks, y_matrix, held_masks, held_y, estimator)
        out[estimator]["lds"] = lds["lds"]
        out[estimator]["lds_mean_output"] = lds["lds_mean_output"]
    return out


def bold_first_rate(masks, y, bold, m, rng, draws, pairs):
    hits = 0
    from transferscope import compute as tsc

    for _ in range(draws):
        if pairs:
            chosen = rng.choice(len(y) // 2, m // 2, replace=False)
            rows = np.concatenate([2 * chosen, 2 * chosen + 1])
        else:
            rows = rng.choice(len(y), m, replace=False)
        try:
            infl = tsc.aggregate_influence(masks[rows], y[rows]).influence
        except ValueError:  # a draw in which some class is always in (or out)
            continue
        hits += int(np.argmin(infl) == bold)
    return hits / draws


def models_for(target, ms, values):
    """The smallest M (log-interpolated) at which ``values`` reaches ``target``."""
    for i, (m, v) in enumerate(zip(ms, values)):
        if v >= target:
            if i == 0:
                return float(m)
            m0, v0 = ms[i - 1], values[i - 1]
            frac = (target - v0) / (v - v0)
            return float(np.exp(np.log(m0) + frac * (np.log(m) - np.log(m0))))
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=288, help="models per design")
    parser.add_argument("--holdout", type=int, default=32, help="held-out models (shared)")
    parser.add_argument("--draws", type=int, default=200)
    parser.add_argument(
        "--out", default=os.path.expanduser("~/transferscope/benchmarks/subset_designs")
    )
    parser.add_argument("--result", default=os.path.join(HERE, "results", "subset_designs.json"))
    args = parser.parse_args(argv)

    import dataclasses

    from transferscope import compute as tsc
    from transferscope.demo_data import make_demo_arrays

    data = demo_transfer_data()
    bold = list(make_demo_arrays().class_names).index("bold")
    base = dataclasses.replace(config_for(args.models), holdout_models=args.holdout)
    timings = {}
    held, n, seconds = train(data, base, args.out, holdout=True)
    timings["holdout"] = {"models": n, "seconds": seconds}
    held_masks, held_y = held.masks, held.outputs("prob")
    runs = {}
    for name in DESIGNS:
        design = tsc.make_design(name, args.models, data.num_pretrain_classes, 0.5, base.seed)
        config = dataclasses.replace(base, design=name, num_models=design.num_models)
        store, n, seconds = train(data, config, args.out, holdout=False)
        timings[name] = {"models": n, "seconds": seconds}
        runs[name] = (store.masks, store.outputs("prob"), design.block_size)

    report = {
        "machine": platform.processor() or platform.machine(),
        "models_per_design": args.models,
        "holdout_models": args.holdout,
        "config": base.to_dict(),
        "timings": timings,
        "target_function": "prob (mean over the test split)",
        "designs": {},
    }
    rng = np.random.default_rng(0)
    for name, (masks, y_matrix, block) in runs.items():
        y = y_matrix.mean(axis=1)
        per_m = {}
        counts = sorted({m for m in (144, args.models) if m <= len(y)})
        for m in counts:
            per_m[m] = summarize(
                masks[:m], y[:m], y_matrix[:m], held_masks, held_y, min(block, m), bold
            )
        sizes = [m for m in DRAW_SIZES if m <= len(y)]
        rates = [
            bold_first_rate(masks, y, bold, m, rng, args.draws, name != "independent")
            for m in sizes
        ]
        report["designs"][name] = {
            "per_model_output_std": float(y.std(ddof=1)),
            "by_models": per_m,
            "bold_first_draw_sizes": sizes,
            "bold_first_rate": rates,
            "models_for_bold_first_in_90pct": models_for(0.9, sizes, rates),
        }
    paper = report["designs"]["independent"]["by_models"]
    report["models_needed_vs_paper"] = {
        name: {
            str(m): (
                report["designs"][name]["by_models"][m]["auto"]["mean_ci_half_width"]
                / paper[m]["difference_of_means"]["mean_ci_half_width"]
            )
            ** 2
            for m in report["designs"][name]["by_models"]
            if m in paper
        }
        for name in DESIGNS
    }
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=1, default=str))
    os.makedirs(os.path.dirname(args.result), exist_ok=True)
    with open(args.result, "w") as f:
        json.dump(report, f, indent=1, default=str)
    print(f"wrote {args.result}")


if __name__ == "__main__":
    main()
