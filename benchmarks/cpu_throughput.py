"""How close subset-model training comes to this machine's arithmetic limit, fp32 and bf16.

Measured in one run, with torch's threads as they are (all cores by default):

1. the matrix-multiply throughput of this CPU (2048^3 products), fp32 and bf16:
   the physical limit training is compared against;
2. one training step of the demo's network (resnet_small, width 16, 16x16,
   batch 128, channels_last), FLOPs counted by torch.utils.flop_counter,
   fp32 and bf16 autocast;
3. whole demo-scale subset models (pretrain 4 epochs on half the 66 classes,
   linear probe, outputs on 1,697 test scans): FLOPs of one model counted the
   same way, wall time per model, achieved FLOP/s, models per hour;
4. with ``--agreement M``: M models per precision (same seeds and masks) and
   the Spearman correlation of the per-class influence, bf16 vs fp32, next to
   fp32 with 2 threads vs 1 thread (the same arithmetic in another order) and
   the fp32 run's split-half Spearman (its own noise);
5. with ``--profile``: the shares of one default-precision model's CPU time
   by kind of operator (convolution, BatchNorm, ReLU, optimiser, ...);
6. with ``--compile``: one training step under ``torch.compile`` against
   eager, with the compile time and the models it takes to earn it back.

    .venv/bin/python benchmarks/cpu_throughput.py                  # 8 models per precision
    .venv/bin/python benchmarks/cpu_throughput.py --agreement 128
    .venv/bin/python benchmarks/cpu_throughput.py --profile      # where the time goes
    .venv/bin/python benchmarks/cpu_throughput.py --compile      # torch.compile, end to end

Writes benchmarks/results/cpu_throughput.json (and, with --agreement,
cpu_precision_agreement.json).
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from ray_benchmark import demo_transfer_data  # noqa: E402  (same data as the Ray benchmark)


def matmul_flops(dtype, n=2048, reps=10, device="cpu"):
    """Measured matrix-multiply FLOP/s of ``device`` in ``dtype``."""
    device = torch.device(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def step_flops(bf16, batch=128, reps=20, compile=False):
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode
    from transferscope.compute.nets import build_network

    torch.manual_seed(0)
    net = build_network("resnet_small", 33, 1, 16).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 1, 16, 16).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 33, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    model = torch.compile(net) if compile else net

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    if compile:  # counted eagerly; the first compiled steps are the compile time
        with FlopCounterMode(display=False) as counter:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss_fn(net(x), y).backward()
        opt.zero_grad()
        start = time.perf_counter()
        step()
        step()
        compile_seconds = time.perf_counter() - start
    else:
        with FlopCounterMode(display=False) as counter:
            step()
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    seconds = (time.perf_counter() - start) / reps
    if compile:
        return counter.get_total_flops(), seconds, compile_seconds
    return counter.get_total_flops(), seconds


def models(data, precision, count, threads=None, device="cpu", group_size=1, **config_kwargs):
    """``(outputs, masks, seconds per model)`` of ``count`` subset models."""
    from transferscope.compute import InfluenceConfig, LocalExecutor, sample_class_masks
    from transferscope.compute.executors import ModelJob

    config = InfluenceConfig(
        num_models=max(count, 2),
        epochs=4,
        seed=0,
        device=device,
        precision=precision,
        **config_kwargs,
    )
    masks = sample_class_masks(max(count, 2), data.num_pretrain_classes, 0.5, 0)[:count]
    jobs = [ModelJob(i, config, i, mask) for i, mask in enumerate(masks)]
    outputs = [None] * count
    executor = LocalExecutor(threads, group_size=group_size)
    start = time.perf_counter()
    failures = executor.run(jobs, data, lambda row, out: outputs.__setitem__(row, out["prob"]))
    if failures:
        raise RuntimeError(f"models failed: {failures}")
    seconds = (time.perf_counter() - start) / count
    return np.array(outputs), masks, seconds


def z_spread(run, reference):
    """Standard deviation of the per-class differences in units of the
    reference's standard error."""
    return float(np.std((run.influence - reference.influence) / reference.stderr, ddof=1))


def harmful_selection(run):
    """The classes the default curation rule (harmful at FDR 0.1) selects."""
    from transferscope.compute.curation import select_classes

    names = [str(c) for c in range(len(run.influence))]
    try:
        return [int(c) for c in select_classes(names, run.influence, q_values=run.q_value)]
    except ValueError:  # the rule selects nothing
        return []


# aten operator names -> what they do, for the profile
OP_CATEGORIES = (
    ("convolution", ("conv",)),
    ("batch_norm", ("batch_norm",)),
    ("relu", ("relu", "threshold_backward", "clamp_min")),
    ("linear_and_loss", ("addmm", "mm", "linear", "cross_entropy", "log_softmax", "nll_loss")),
    # SGD on a CPU is a loop of these too (no fused or foreach kernels there)
    (
        "elementwise_and_copies",
        ("add", "mul", "div", "sum", "mean", "avg_pool", "copy", "fill", "zero", "_foreach"),
    ),
)


def profile_model(data, precision):
    """Shares of one whole model's CPU time (operators' own time) by kind."""
    from torch.profiler import ProfilerActivity, profile
    from transferscope.compute import InfluenceConfig, sample_class_masks, train_subset_model

    config = InfluenceConfig(num_models=2, epochs=4, seed=0, device="cpu", precision=precision)
    mask = sample_class_masks(2, data.num_pretrain_classes, 0.5, 0)[0]
    train_subset_model(config, 0, mask, data)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_subset_model(config, 0, mask, data)
    shares = dict.fromkeys([name for name, _ in OP_CATEGORIES] + ["other"], 0.0)
    total = 0.0
    for event in prof.key_averages():
        if not event.key.startswith("aten::"):
            continue  # Python-level ranges would count their children twice
        total += event.self_cpu_time_total
        name = event.key.lower()
        kind = next((k for k, words in OP_CATEGORIES if any(w in name for w in words)), "other")
        shares[kind] += event.self_cpu_time_total
    return {k: v / total for k, v in shares.items()}


def model_steps(data, epochs=4, batch=128):
    """Pretraining steps of one demo-scale model (half the classes' samples)."""
    from transferscope.compute import sample_class_masks

    mask = sample_class_masks(2, data.num_pretrain_classes, 0.5, 0)[0]
    n = int(mask[np.asarray(data.pretrain_labels)].sum())
    return epochs * -(-n // batch)


def model_flops(data, precision):
    from torch.utils.flop_counter import FlopCounterMode
    from transferscope.compute import InfluenceConfig, sample_class_masks, train_subset_model

    config = InfluenceConfig(num_models=2, epochs=4, seed=0, device="cpu", precision=precision)
    mask = sample_class_masks(2, data.num_pretrain_classes, 0.5, 0)[0]
    with FlopCounterMode(display=False) as counter:
        train_subset_model(config, 0, mask, data)
    return counter.get_total_flops()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=8, help="models timed per precision")
    parser.add_argument(
        "--agreement",
        type=int,
        default=0,
        help="models per precision for the influence agreement (0: skip)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile one model of the default precision"
    )
    parser.add_argument(
        "--compile", action="store_true", help="time torch.compile'd training steps"
    )
    args = parser.parse_args()
    from scipy import stats
    from transferscope.compute.estimators import aggregate_influence, split_half_spearman

    threads = torch.get_num_threads()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {threads} threads"
    }
    peak = {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)}
    result["matmul_gflops"] = {k: v / 1e9 for k, v in peak.items()}
    print(
        f"{result['machine']}\nmatmul: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s"
    )

    data = demo_transfer_data()
    for precision in ("fp32", "bf16"):
        flops, seconds = step_flops(precision == "bf16")
        per_model = model_flops(data, precision)
        _, _, model_seconds = models(data, precision, args.models)
        row = {
            "step_gflop": flops / 1e9,
            "step_ms": 1e3 * seconds,
            "step_gflops": flops / seconds / 1e9,
            "step_fraction_of_own_peak": flops / seconds / peak[precision],
            "model_gflop": per_model / 1e9,
            "model_seconds": model_seconds,
            "model_gflops": per_model / model_seconds / 1e9,
            "model_fraction_of_own_peak": per_model / model_seconds / peak[precision],
            "model_fraction_of_fp32_peak": per_model / model_seconds / peak["fp32"],
            "models_per_hour": 3600 / model_seconds,
        }
        result[precision] = row
        print(
            f"{precision}: step {row['step_ms']:.1f} ms = {row['step_gflops']:.0f} GFLOP/s "
            f"({100 * row['step_fraction_of_own_peak']:.0f}% of {precision} matmul); "
            f"whole model {row['model_seconds']:.2f} s, {row['model_gflop']:.0f} GFLOP = "
            f"{row['model_gflops']:.0f} GFLOP/s ({100 * row['model_fraction_of_own_peak']:.0f}%"
            f" of {precision} matmul, {100 * row['model_fraction_of_fp32_peak']:.0f}% of fp32);"
            f" {row['models_per_hour']:.0f} models/hour"
        )
    result["bf16_speedup_models_per_hour"] = (
        result["bf16"]["models_per_hour"] / result["fp32"]["models_per_hour"]
    )
    print(f"bf16 / fp32 models per hour: {result['bf16_speedup_models_per_hour']:.2f}x")
    from transferscope.compute.train import cpu_has_matrix_units, resolve_precision

    default = resolve_precision(torch.device("cpu"))
    result["default_precision"] = default
    result["cpu_has_matrix_units"] = cpu_has_matrix_units()
    # the issue's yardstick: the default path against the faster matmul of the two
    result["default_fraction_of_bf16_matmul"] = result[default]["model_gflops"] * 1e9 / peak["bf16"]
    print(
        f"default on this CPU (precision='auto'): {default} (matrix units: "
        f"{result['cpu_has_matrix_units']}); whole model at "
        f"{100 * result['default_fraction_of_bf16_matmul']:.0f}% of bf16 matmul, "
        f"{result[default]['models_per_hour']:.0f} models/hour"
    )
    if args.compile:
        result["compile"] = {}
        for precision in ("fp32", "bf16"):
            _, eager = step_flops(precision == "bf16")
            _, compiled, compile_seconds = step_flops(precision == "bf16", compile=True)
            steps = model_steps(data)
            row = {
                "eager_step_ms": 1e3 * eager,
                "compiled_step_ms": 1e3 * compiled,
                "compile_seconds": compile_seconds,
                "steps_per_model": steps,
                # compiling once per process, then every model's steps
                "models_to_break_even": compile_seconds / (steps * (eager - compiled))
                if compiled < eager
                else None,
            }
            result["compile"][precision] = row
            print(
                f"torch.compile, {precision}: step {row['compiled_step_ms']:.1f} ms against "
                f"{row['eager_step_ms']:.1f} ms eager, after {compile_seconds:.0f} s of compiling"
                f" ({steps} steps a model; break-even after "
                f"{row['models_to_break_even'] or float('inf'):.0f} models)"
            )
    if args.profile:
        result["profile"] = profile_model(data, default)
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in result["profile"].items())
        print(f"profile of one {default} model (share of CPU time): {shares}")

    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    if args.agreement:
        m = args.agreement
        fp32, masks, _ = models(data, "fp32", m)
        bf16, _, _ = models(data, "bf16", m)
        one_thread, _, _ = models(data, "fp32", m, threads=1)
        runs = {
            name: aggregate_influence(masks, out)
            for name, out in (("fp32", fp32), ("bf16", bf16), ("fp32_1thread", one_thread))
        }
        infl = {name: run.influence for name, run in runs.items()}
        agreement = {
            "models": m,
            "bf16_vs_fp32": stats.spearmanr(infl["bf16"], infl["fp32"])[0],
            "fp32_1thread_vs_fp32": stats.spearmanr(infl["fp32_1thread"], infl["fp32"])[0],
            "fp32_split_half": split_half_spearman(masks, fp32),
            "bf16_split_half": split_half_spearman(masks, bf16),
            # the agreement criterion: the per-class differences in units of the
            # fp32 estimate's standard error; two independent estimates of the
            # same quantity give a standard deviation of about sqrt(2)
            "z_sd_limit": 1.15 * np.sqrt(2),
            "z_sd_bf16_vs_fp32": z_spread(runs["bf16"], runs["fp32"]),
            "z_sd_fp32_1thread_vs_fp32": z_spread(runs["fp32_1thread"], runs["fp32"]),
            "harmful_fdr_selection": {name: harmful_selection(run) for name, run in runs.items()},
        }
        agreement["bf16_meets_criterion"] = bool(
            agreement["z_sd_bf16_vs_fp32"] <= agreement["z_sd_limit"]
            and agreement["harmful_fdr_selection"]["bf16"]
            == agreement["harmful_fdr_selection"]["fp32"]
        )
        with open(os.path.join(HERE, "results", "cpu_precision_agreement.json"), "w") as f:
            json.dump(dict(agreement, machine=result["machine"]), f, indent=2)
        print(
            f"per-class influence, {m} models each (Spearman): bf16 vs fp32 "
            f"{agreement['bf16_vs_fp32']:.3f}; fp32 1 thread vs fp32 {threads} threads "
            f"{agreement['fp32_1thread_vs_fp32']:.3f}; split-half fp32 "
            f"{agreement['fp32_split_half']:.3f}, bf16 {agreement['bf16_split_half']:.3f}\n"
            f"differences in fp32 standard errors (sd; limit {agreement['z_sd_limit']:.2f}): "
            f"bf16 {agreement['z_sd_bf16_vs_fp32']:.2f}, fp32 1 thread "
            f"{agreement['z_sd_fp32_1thread_vs_fp32']:.2f}; harmful classes at FDR 0.1: "
            f"{agreement['harmful_fdr_selection']}"
        )
    with open(os.path.join(HERE, "results", "cpu_throughput.json"), "w") as f:
        json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
