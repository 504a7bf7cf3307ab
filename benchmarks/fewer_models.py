"""Fewer models for the same answer: subset designs and estimators, measured on the demo.

Trains, on the demo's data with the demo's protocol (resnet_small width 16,
16x16, 4 epochs, linear probe; target function: correct-class probability),
``--models`` subset models for each design:

    paper       each model a uniformly random half of the classes, its own seed
                (the paper's plain design)
    pairs       complementary pairs (model 2i+1 sees exactly the classes model
                2i did not; every class in half the models), own seeds: the
                default design of ``compute_class_influence``
    pairs_crn   the same pairs, and the two models of a pair share their seed
                (initialisation and batch order): common random numbers, so
                seed noise cancels inside a pair

and two estimators on each: the difference of means (the paper's) and a
ridge regression of each model's output on its class mask (as in datamodels),
which also removes the other classes' effects from each class's estimate.

Measured per design and estimator (per-class aggregate influence, i.e. the
mean over the target test samples):

- the Spearman correlation of the first M models' ranking with a reference
  ranking from the *other* designs' models (difference of means), for M = 16
  ... --models; the models needed to reach 0.9, where reached;
- split-half reliability at M (two disjoint halves of M/2 models, whole pairs
  kept together), and from it, by the Spearman-Brown formula, the models
  needed for a correlation of 0.9 with the (noise-free) truth;
- the reference's own split-half reliability, which caps the first figure;
- the practical question at M models: how often (over random draws of M
  models, whole pairs kept together) the planted harmful class ``bold`` is
  ranked the most harmful, and the models needed for that in 90% of draws.

    .venv/bin/python benchmarks/fewer_models.py --models 256

Models are stored (resumable) under --out; results go to
benchmarks/results/fewer_models.json.
"""

import argparse
import hashlib
import json
import os
import platform
import sys
import time

import numpy as np
from scipy import stats

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from ray_benchmark import config_for, demo_transfer_data  # noqa: E402  (the demo's data)

DESIGNS = ("paper", "pairs", "pairs_crn")
ESTIMATORS = ("difference_of_means", "ridge_regression")
# model index bases: each design trains its own models (different seeds)
INDEX_BASE = {"paper": 10_000, "pairs": 20_000, "pairs_crn": 30_000}


def design(name, num_models, num_classes, seed=0):
    """``(masks (M, C), model indices (M,))`` of a design."""
    from transferscope.compute.subsets import sample_class_masks

    base = INDEX_BASE[name]
    if name == "paper":
        rng = np.random.default_rng([seed, 1])
        masks = np.zeros((num_models, num_classes), dtype=bool)
        for m in range(num_models):
            masks[m, rng.choice(num_classes, num_classes // 2, replace=False)] = True
        return masks, base + np.arange(num_models)
    masks = sample_class_masks(num_models, num_classes, 0.5, seed)
    if name == "pairs":
        return masks, base + np.arange(num_models)
    return masks, base + np.arange(num_models) // 2  # pairs_crn: a pair shares its seed


def train_design(name, data, config, out_dir):
    from transferscope.compute import run_subset_models
    from transferscope.compute.store import ResultsStore

    masks, indices = design(name, config.num_models, data.num_pretrain_classes)
    # the config hash names the design too: a store is only resumed for the same rows
    rows_hash = hashlib.sha256(masks.tobytes() + indices.tobytes()).hexdigest()[:16]
    config_hash = f"{config.fingerprint(data.fingerprint())}/{name}/{rows_hash}"
    store = ResultsStore.open(os.path.join(out_dir, name), config_hash, masks,
                              len(data.test_labels))
    start = time.perf_counter()
    trained = run_subset_models(config, data, store, model_indices=indices,
                                on_model_done=lambda i, done, total: print(
                                    f"\r{name}: {done}/{total}", end="", flush=True))
    print()
    seconds = time.perf_counter() - start
    return store.masks, store.outputs("prob").mean(axis=1), len(trained), seconds


def estimate(masks, y, estimator, ridge=1.0):
    """Per-class aggregate influence from per-model mean outputs ``y``."""
    from transferscope.compute import class_influence

    if estimator == "difference_of_means":
        return class_influence(masks, y[:, None]).influence[:, 0]
    X = masks.astype(np.float64)
    X = X - X.mean(axis=0)
    yc = y - y.mean()
    # ridge on centred masks; the coefficient is the effect of adding the class
    return np.linalg.solve(X.T @ X + ridge * np.eye(X.shape[1]), X.T @ yc)


def halves(num_models, rng):
    """Two disjoint halves of a prefix of ``num_models`` models, whole pairs kept together."""
    pairs = rng.permutation(num_models // 2)
    first, second = pairs[: len(pairs) // 2], pairs[len(pairs) // 2:]
    expand = lambda p: np.concatenate([2 * p, 2 * p + 1])  # noqa: E731
    return expand(first), expand(second)


def spearman(a, b):
    return float(stats.spearmanr(a, b).statistic)


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


def planted_top_rate(masks, y, estimator, cls, m, rng, draws):
    """Fraction of ``draws`` random draws of ``m`` models (whole pairs) in which
    class ``cls`` has the lowest estimated influence."""
    hits = 0
    for _ in range(draws):
        pairs = rng.choice(len(y) // 2, m // 2, replace=False)
        rows = np.concatenate([2 * pairs, 2 * pairs + 1])
        try:
            hits += int(np.argmin(estimate(masks[rows], y[rows], estimator)) == cls)
        except ValueError:  # a draw in which some class is always in (or out)
            continue
    return hits / draws


def spearman_brown_models(m_half, r_half, target=0.9):
    """Models for a correlation ``target`` with the truth, from split-half reliability.

    The correlation with the truth of an M-model estimate is sqrt(reliability(M));
    reliability grows as r(M) / (1 - r(M)) proportional to M.
    """
    if not np.isfinite(r_half) or r_half <= 0:
        return None
    need = target ** 2
    return float(m_half * (need / (1 - need)) / (r_half / (1 - r_half)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=256, help="models per design")
    parser.add_argument("--out", default=os.path.expanduser(
        "~/transferscope/benchmarks/fewer_models"))
    parser.add_argument("--splits", type=int, default=20, help="random half-splits per M")
    parser.add_argument("--draws", type=int, default=200,
                        help="random draws of M models for the planted-class rate")
    parser.add_argument("--result", default=os.path.join(HERE, "results", "fewer_models.json"))
    args = parser.parse_args(argv)

    from transferscope.demo_data import make_demo_arrays

    data = demo_transfer_data()
    bold = list(make_demo_arrays().class_names).index("bold")
    config = config_for(args.models)
    runs = {}
    for name in DESIGNS:
        masks, y, trained, seconds = train_design(name, data, config, args.out)
        runs[name] = (masks, y)
        print(f"{name}: {trained} models trained in {seconds:.0f} s")

    ms = sorted({m for m in (16, 32, 64, 128, 256, 512, 1024) if m < args.models}
                | {args.models})
    rng = np.random.default_rng(0)
    draws_rng = np.random.default_rng(1)  # its own stream: the split-half figures stay as they were
    report = {"machine": platform.processor() or platform.machine(),
              "models_per_design": args.models, "config": config.to_dict(),
              "target_function": "prob (mean over the test split)", "designs": {}}
    for name in DESIGNS:
        others = [runs[o] for o in DESIGNS if o != name]
        ref_masks = np.concatenate([m for m, _ in others])
        ref_y = np.concatenate([y for _, y in others])
        reference = estimate(ref_masks, ref_y, "difference_of_means")
        ref_a, ref_b = halves(len(ref_y), rng)
        ref_reliability = spearman(estimate(ref_masks[ref_a], ref_y[ref_a], "difference_of_means"),
                                   estimate(ref_masks[ref_b], ref_y[ref_b], "difference_of_means"))
        masks, y = runs[name]
        rows = {}
        for est in ESTIMATORS:
            vs_ref, split_half = [], []
            for m in ms:
                vs_ref.append(spearman(estimate(masks[:m], y[:m], est), reference))
                rs = []
                for _ in range(args.splits):
                    a, b = halves(m, rng)
                    try:
                        rs.append(spearman(estimate(masks[a], y[a], est),
                                           estimate(masks[b], y[b], est)))
                    except ValueError:  # a random half in which a class is always in (or out)
                        continue
                split_half.append(float(np.mean(rs)))
            top = [planted_top_rate(masks[:ms[-1]], y[:ms[-1]], est, bold, m, draws_rng,
                                    args.draws) for m in ms]
            rows[est] = {
                "M": ms, "spearman_vs_reference": vs_ref,
                "bold_ranked_most_harmful": top,
                "models_for_bold_first_in_90pct": models_for(0.9, ms, top),
                "models_for_0.9_vs_reference": models_for(0.9, ms, vs_ref),
                "split_half_reliability": split_half,
                "models_for_0.9_with_truth_spearman_brown": spearman_brown_models(
                    ms[-1] / 2, split_half[-1]),
            }
        report["designs"][name] = {
            "reference": f"difference of means over the other designs' {len(ref_y)} models",
            "reference_split_half_reliability": ref_reliability,
            "per_model_output_std": float(y.std(ddof=1)),
            **rows,
        }
    print(json.dumps(report["designs"], indent=1))
    os.makedirs(os.path.dirname(args.result), exist_ok=True)
    with open(args.result, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {args.result}")


if __name__ == "__main__":
    main()
