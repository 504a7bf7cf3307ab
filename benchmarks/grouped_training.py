"""Grouped subset-model training against one model at a time, on this machine's device.

Measured in one run, on CUDA when present, else on the CPU:

1. the device's matrix-multiply throughput, fp32 and bf16 (the physical limit);
2. the FLOPs of one demo-scale subset model (pretrain 4 epochs on half of the
   68 classes, features for the probe), counted by torch.utils.flop_counter;
3. models per hour one at a time, then in groups of each ``--groups`` size
   (and ``auto``: as many as fit in GPU memory): achieved FLOP/s and its
   fraction of the matmul throughput of the precision in use (``--precision``,
   default ``auto``: bf16 autocast on CUDA and on CPUs with AMX, else fp32),
   and the ratio over one at a time;
4. with ``--shift N``: one at a time with ``augment_shift=N`` (the cost of
   shifting on the device), as a ratio over one at a time without it;
5. with ``--agreement M``: M models one at a time and M grouped (same seeds
   and masks), the Spearman correlation of their per-class influence, next
   to the one-at-a-time run's split-half Spearman (its own noise) and, on a
   CPU, one-at-a-time with 1 thread (the same arithmetic in another order);
   and the agreement criterion: the standard deviation of the per-class
   differences in units of the one-at-a-time run's standard errors (at most
   1.15 x sqrt(2)).

    .venv/bin/python benchmarks/grouped_training.py                       # 16 models each
    .venv/bin/python benchmarks/grouped_training.py --models 64 --groups 8 32 --agreement 128
    .venv/bin/python benchmarks/grouped_training.py --precision bf16 --groups 4 8

Writes benchmarks/results/grouped_training_<cpu|cuda>.json.
"""

import argparse
import json
import os
import platform
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from cpu_throughput import matmul_flops, model_flops, models, z_spread  # noqa: E402
from ray_benchmark import demo_transfer_data  # noqa: E402


def describe(device):
    if device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=16, help="models timed per setting")
    parser.add_argument(
        "--groups",
        type=int,
        nargs="*",
        default=None,
        help="group sizes to time (default: 4 8 on a CPU; 8 32 on CUDA)",
    )
    parser.add_argument(
        "--agreement",
        type=int,
        default=0,
        help="models per path for the influence agreement (0: skip)",
    )
    parser.add_argument(
        "--shift",
        type=int,
        default=0,
        help="also time one at a time with augment_shift=N (0: skip)",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16"),
        help="the models' precision (default: what 'auto' picks on this device)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="result JSON (default: benchmarks/results/grouped_training_<device>.json)",
    )
    args = parser.parse_args()

    from scipy import stats
    from transferscope.compute import InfluenceConfig
    from transferscope.compute.estimators import aggregate_influence, split_half_spearman
    from transferscope.compute.grouped import auto_group_size
    from transferscope.compute.train import resolve_precision

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(torch.device(device), args.precision)
    groups = args.groups or ([8, 32] if device == "cuda" else [4, 8])
    data = demo_transfer_data()
    result = {
        "machine": describe(device),
        "device": device,
        "precision": precision,
        "models": args.models,
    }
    peak = {
        "fp32": matmul_flops(torch.float32, device=device),
        "bf16": matmul_flops(torch.bfloat16, device=device),
    }
    result["matmul_gflops"] = {k: v / 1e9 for k, v in peak.items()}
    flops = model_flops(data, "fp32")  # the arithmetic is the same in either precision
    result["model_gflop"] = flops / 1e9
    print(
        f"{result['machine']}\nmatmul: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 "
        f"{peak['bf16'] / 1e9:.0f} GFLOP/s; one model {flops / 1e9:.0f} GFLOP"
    )

    if device == "cuda":
        config = InfluenceConfig(
            num_models=args.models, epochs=4, device=device, precision=args.precision
        )
        groups.append(auto_group_size(config, data, args.models))
        result["auto_group_size"] = groups[-1]

    rows = {}
    for size in [1] + groups:
        models(data, args.precision, min(2, args.models), device=device, group_size=size)  # warm-up
        _, _, seconds = models(data, args.precision, args.models, device=device, group_size=size)
        row = {
            "group_size": size,
            "model_seconds": seconds,
            "models_per_hour": 3600 / seconds,
            "gflops": flops / seconds / 1e9,
            "fraction_of_matmul": flops / seconds / peak[precision],
        }
        row["ratio_over_one_at_a_time"] = (
            row["models_per_hour"] / rows.get(1, row)["models_per_hour"]
        )
        rows[size] = row
        print(
            f"group {size:>3}: {seconds:.3f} s/model, {row['models_per_hour']:.0f} models/hour, "
            f"{row['gflops']:.0f} GFLOP/s = {100 * row['fraction_of_matmul']:.1f}% of "
            f"{precision} matmul; {row['ratio_over_one_at_a_time']:.2f}x one at a time"
        )
    result["settings"] = list(rows.values())

    if args.shift:
        # same models, images shifted on the device: the augmentation's cost
        models(data, args.precision, min(2, args.models), device=device, augment_shift=args.shift)
        _, _, seconds = models(
            data, args.precision, args.models, device=device, augment_shift=args.shift
        )
        ratio = rows[1]["model_seconds"] / seconds
        result["augment_shift"] = {
            "shift": args.shift,
            "model_seconds": seconds,
            "models_per_hour_ratio_over_none": ratio,
        }
        print(
            f"one at a time, augment_shift={args.shift}: {seconds:.3f} s/model, "
            f"{ratio:.2f}x the models per hour without it"
        )

    if args.agreement:
        m = args.agreement
        grouped_rows = [r for r in rows.values() if r["group_size"] > 1] or [{"group_size": 2}]
        size = max(grouped_rows, key=lambda r: r.get("models_per_hour", 0))["group_size"]
        single, masks, _ = models(data, args.precision, m, device=device, group_size=1)
        grouped, _, _ = models(data, args.precision, m, device=device, group_size=size)
        runs = {
            "single": aggregate_influence(masks, single),
            "grouped": aggregate_influence(masks, grouped),
        }
        infl = {name: run.influence for name, run in runs.items()}
        agreement = {
            "models": m,
            "group_size": size,
            "grouped_vs_single": stats.spearmanr(infl["grouped"], infl["single"])[0],
            "z_sd_grouped_vs_single": z_spread(runs["grouped"], runs["single"]),
            "z_sd_limit": 1.15 * 2**0.5,
            "single_split_half": split_half_spearman(masks, single),
            "grouped_split_half": split_half_spearman(masks, grouped),
        }
        if device == "cpu" and torch.get_num_threads() > 1:
            one, _, _ = models(data, args.precision, m, threads=1, group_size=1)
            agreement["single_1thread_vs_single"] = stats.spearmanr(
                aggregate_influence(masks, one).influence, infl["single"]
            )[0]
        result["agreement"] = agreement
        print(
            "per-class influence, Spearman: "
            + ", ".join(f"{k} {v:.3f}" for k, v in agreement.items() if isinstance(v, float))
        )

    out = args.out or os.path.join(HERE, "results", f"grouped_training_{device}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
