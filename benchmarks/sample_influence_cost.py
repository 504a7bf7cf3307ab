"""The cost of example-level attribution (TRAK) on the demo, next to a class-level model.

Measured in one run, on the demo datasets (6,200 pretraining glyphs, 1,697
target test scans) with the demo's protocol (resnet_small, width 16, 16x16,
4 epochs, linear probe):

1. one class-level subset model (half the classes): the baseline;
2. ``compute_sample_influence`` with ``--models`` attribution models and
   ``--holdout`` held-out models: the time of each model's training, of the
   TRAK scoring, of each held-out model, and the run's datamodeling score;
3. the planted leak: for each leaked test 7, how many of its near-copies in
   the pretraining class ``7`` are among its 10 most helpful pretraining
   images (recall@10), against the share a random draw of 10 images of class
   ``7`` would hold.

    .venv/bin/python benchmarks/sample_influence_cost.py --models 2 --holdout 3

Writes benchmarks/results/sample_influence_cost.json.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("FIFTYONE_DATABASE_NAME", "transferscope_benchmarks")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import transferscope as ts  # noqa: E402
from transferscope import compute as tsc  # noqa: E402
from transferscope.demo import DEFAULTS, load_or_build_demo  # noqa: E402
from transferscope.influence_run import collect_labels  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--holdout", type=int, default=3)
    parser.add_argument("--proj-dim", type=int, default=2048)
    parser.add_argument("--damping", type=float, default=0.1)
    args = parser.parse_args()

    pre, tgt = load_or_build_demo()
    labelled = collect_labels(pre, tgt)
    config = tsc.InfluenceConfig(epochs=DEFAULTS["epochs"], seed=0, channels=1, device="cpu")
    data = labelled.decode(config.image_size, config.channels, config.resize)
    half = np.zeros(data.num_pretrain_classes, dtype=bool)
    half[::2] = True
    tsc.train_subset_model(config, 0, half, data)  # warm-up (tensors, threads)
    t0 = time.perf_counter()
    tsc.train_subset_model(config, 1, half, data)
    class_model_s = time.perf_counter() - t0

    stamps = [time.perf_counter()]
    results = ts.compute_sample_influence(
        pre,
        tgt,
        "bench_samples",
        num_models=args.models,
        holdout_models=args.holdout,
        proj_dim=args.proj_dim,
        damping=args.damping,
        epochs=DEFAULTS["epochs"],
        seed=0,
        device="cpu",
        output_dir=tempfile.mkdtemp(),
        overwrite=True,
        progress=lambda done, total: stamps.append(time.perf_counter()),
    )
    leak = leak_recall(pre, results, tgt)
    steps = np.diff(stamps)
    train_s, scoring_s = steps[: args.models], float(steps[args.models])
    holdout_s = steps[args.models + 1 :]
    for ds in (pre, tgt):
        ds.delete_run("bench_samples")
    out = {
        "machine": platform.processor() or platform.machine(),
        "pretraining_images": results.metrics["num_pretraining_samples"],
        "target_images": results.metrics["num_target_samples"],
        "class_level_model_s": round(class_model_s, 2),
        "attribution_model_train_s": [round(float(s), 2) for s in train_s],
        "trak_scoring_s": round(scoring_s, 2),
        "trak_scoring_per_model_s": round(scoring_s / args.models, 2),
        "holdout_model_s": [round(float(s), 2) for s in holdout_s],
        "per_attribution_model_vs_class_model": round(
            (float(np.mean(train_s)) + scoring_s / args.models) / class_model_s, 1
        ),
        "lds": results.metrics.get("lds"),
        **leak,
        "proj_dim": args.proj_dim,
        "damping": args.damping,
    }
    print(json.dumps(out, indent=2))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    with open(os.path.join(path, "sample_influence_cost.json"), "w") as f:
        json.dump(out, f, indent=2)


def leak_recall(pre, results, tgt, k=10):
    """Recall@k of the planted copies among each leaked test image's top-k
    helpful images, and the same for k random images of the copies' class."""
    ids, of, labels = pre.values(["id", "leak_of", "ground_truth.label"])
    row = {sid: i for i, sid in enumerate(results.pretrain_ids)}
    column = {sid: t for t, sid in enumerate(results.target_ids)}
    scores = np.asarray(results.scores())
    copies = {}
    for sid, target_id in zip(ids, of):
        if target_id is not None:
            copies.setdefault(target_id, set()).add(row[sid])
    copy_label = {labels[ids.index(sid)] for sid, o in zip(ids, of) if o is not None}
    in_class = sum(1 for lab in labels if lab in copy_label)
    recalls, chance = [], []
    for target_id, rows in copies.items():
        top = set(np.argsort(-scores[:, column[target_id]], kind="stable")[:k])
        recalls.append(len(top & rows) / min(k, len(rows)))
        chance.append(len(rows) / in_class)  # expected share of copies in k random images
    return {
        "leaked_test_images": len(copies),
        "copies_per_leak": sorted({len(r) for r in copies.values()}),
        "leak_recall_at_10": round(float(np.mean(recalls)), 3),
        "leak_recall_at_10_random_same_class": round(float(np.mean(chance)), 3),
    }


if __name__ == "__main__":
    main()
