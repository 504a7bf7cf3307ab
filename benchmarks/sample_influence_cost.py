"""The cost of example-level attribution (TRAK) on the demo, next to a class-level model.

Measured in one run, on the demo datasets (6,200 pretraining glyphs, 1,697
target test scans) with the demo's protocol (resnet_small, width 16, 16x16,
4 epochs, linear probe):

1. one class-level subset model (half the classes): the baseline;
2. ``compute_sample_influence`` with ``--models`` attribution models and
   ``--holdout`` held-out models: the time of each model's training, of the
   TRAK scoring, of each held-out model, and the run's datamodeling score;
3. the planted truth (``transferscope.demo.sample_influence_report``): for
   each leaked test 7, how many of its near-copies in the pretraining class
   ``7`` are among its 10 most helpful pretraining images (recall@10),
   against the share a random draw of 10 images of class ``7`` would hold;
   the same for the second leak's single transformed copies; and how many of
   the 100 most harmful images belong to the planted harmful class.

With ``--loss-weighting both`` the same models are scored with and without
TRAK's ``1 - p`` weighting (the second scoring reuses the trained models).

    .venv/bin/python benchmarks/sample_influence_cost.py --models 4 --holdout 16 \
        --loss-weighting both

Writes benchmarks/results/sample_influence_cost.json (or ``--results``).
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
from transferscope.demo import DEFAULTS, load_or_build_demo, sample_influence_report  # noqa: E402
from transferscope.influence_run import collect_labels  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--holdout", type=int, default=3)
    parser.add_argument("--proj-dim", type=int, default=2048)
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--loss-weighting", default="none", choices=("none", "trak", "both"))
    parser.add_argument("--results", default="sample_influence_cost.json", help="file in results/")
    args = parser.parse_args()
    weightings = ["none", "trak"] if args.loss_weighting == "both" else [args.loss_weighting]

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

    store = tempfile.mkdtemp()
    out = {
        "machine": platform.processor() or platform.machine(),
        "class_level_model_s": round(class_model_s, 2),
        "proj_dim": args.proj_dim,
        "damping": args.damping,
        "by_loss_weighting": {},
    }
    for weighting in weightings:
        stamps = [time.perf_counter()]
        results = ts.compute_sample_influence(
            pre,
            tgt,
            "bench_samples",
            num_models=args.models,
            holdout_models=args.holdout,
            proj_dim=args.proj_dim,
            damping=args.damping,
            loss_weighting=weighting,
            epochs=DEFAULTS["epochs"],
            seed=0,
            device="cpu",
            output_dir=store,  # the second weighting reuses the trained models
            overwrite=True,
            progress=lambda done, total, stamps=stamps: stamps.append(time.perf_counter()),
        )
        steps = np.diff(stamps)
        if len(steps) == args.models + 1 + args.holdout:  # this call trained the models
            train_s, holdout_s = steps[: args.models], steps[args.models + 1 :]
            out.update(
                pretraining_images=results.metrics["num_pretraining_samples"],
                target_images=results.metrics["num_target_samples"],
                attribution_model_train_s=[round(float(s), 2) for s in train_s],
                holdout_model_s=[round(float(s), 2) for s in holdout_s],
            )
            scoring_s = float(steps[args.models])
        else:
            scoring_s = float(steps[0])
        out["by_loss_weighting"][weighting] = {
            "trak_scoring_s": round(scoring_s, 2),
            "trak_scoring_per_model_s": round(scoring_s / args.models, 2),
            "per_attribution_model_vs_class_model": round(
                (float(np.mean(out["attribution_model_train_s"])) + scoring_s / args.models)
                / class_model_s,
                1,
            ),
            "lds": results.metrics.get("lds"),
            "class_spearman": results.metrics.get("class_spearman"),
            **sample_influence_report(results, pre, tgt.info["planted"]),
        }
    for ds in (pre, tgt):
        ds.delete_run("bench_samples")
    print(json.dumps(out, indent=2))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    with open(os.path.join(path, os.path.basename(args.results)), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
