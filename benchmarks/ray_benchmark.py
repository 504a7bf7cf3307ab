"""Subset models per hour: the Ray executor on a two-node cluster vs the local one.

Data: the demo's arrays (66 glyph classes, 1,697 target test scans), 2x2
pooled to the demo's 16x16; the demo's protocol (resnet_small width 16, four
epochs, linear probe). In one run, on the same machine:

- local executor, torch's default threads (all cores, one model at a time);
- local executor, one thread per model (the per-model cost the Ray tasks pay);
- Ray executor on a throwaway cluster of two single-CPU nodes (head + one
  worker node, loopback only, in a private network namespace: see
  scripts/ray_local_cluster.py), one model per CPU.

Prints models per hour for each, the Ray run's overhead against the ideal
(the one-thread time split over two workers), and checks that the Ray
store equals the one-thread local store bit for bit. Writes
benchmarks/results/ray_executor.json.

    .venv/bin/python benchmarks/ray_benchmark.py            # 24 models
    .venv/bin/python benchmarks/ray_benchmark.py --models 8
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def pool(images):
    """The demo's 32x32 glyphs at 16x16 (as the demo's decoding resizes them)."""
    x = images.reshape(len(images), 16, 2, 16, 2).astype(np.float32).mean(axis=(2, 4))
    return np.round(x).astype(np.uint8)[..., None]


def demo_transfer_data():
    from transferscope.compute import TransferData

    from transferscope.demo_data import make_demo_arrays

    arrays = make_demo_arrays()
    return TransferData(
        pool(arrays.pretrain_images),
        arrays.pretrain_labels,
        len(arrays.class_names),
        pool(arrays.train_images),
        arrays.train_labels,
        pool(arrays.test_images),
        arrays.test_labels,
        10,
    )


def config_for(models):
    from transferscope.compute import InfluenceConfig

    from transferscope.demo import DEFAULTS

    return InfluenceConfig(num_models=models, epochs=DEFAULTS["epochs"], seed=0, device="cpu")


def timed_run(data, config, store_dir, executor):
    from transferscope.compute import open_store, run_subset_models

    store = open_store(store_dir, config, data)
    start = time.perf_counter()
    run_subset_models(config, data, store, executor=executor)
    return time.perf_counter() - start, store


def ray_part(models, out_path):
    """Runs inside the cluster's namespace: connect, train, report timings."""
    import ray
    from transferscope.compute import RayExecutor

    data, config = demo_transfer_data(), config_for(models)
    start = time.perf_counter()
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, logging_level="ERROR")
    connect = time.perf_counter() - start
    workers = sum(n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"])
    seconds, store = timed_run(
        data,
        config,
        os.path.join(os.path.dirname(out_path), "ray"),
        RayExecutor(address=os.environ["RAY_ADDRESS"], cpus_per_model=1),
    )
    with open(out_path, "w") as f:
        json.dump({"connect_s": connect, "run_s": seconds, "cpus": workers, "store": store.path}, f)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=24)
    parser.add_argument("--ray-part", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_part:
        return ray_part(args.models, args.ray_part)

    import torch
    from transferscope.compute import LocalExecutor, ResultsStore
    from transferscope.compute.store import OUTPUT_NAMES

    data, config = demo_transfer_data(), config_for(args.models)
    work = tempfile.mkdtemp(prefix="ts-ray-bench-")
    threads = torch.get_num_threads()
    print(
        f"{args.models} subset models, demo scale ({len(data.pretrain_labels)} pretraining "
        f"images, {data.num_pretrain_classes} classes, {len(data.test_labels)} test), "
        f"{os.cpu_count()} cores"
    )
    local_all, _ = timed_run(data, config, os.path.join(work, "local_all"), LocalExecutor())
    print(f"  local, {threads} threads:  {local_all:7.1f} s")
    local_one, store_one = timed_run(
        data, config, os.path.join(work, "local_one"), LocalExecutor(threads=1)
    )
    print(f"  local, 1 thread:    {local_one:7.1f} s")
    out_path = os.path.join(work, "ray.json")
    cluster = [
        "unshare",
        "-n",
        sys.executable,
        os.path.join(ROOT, "scripts", "ray_local_cluster.py"),
        "--workers=1",
        "--head-cpus=1",
        "--worker-cpus=1",
        "--",
        sys.executable,
        os.path.abspath(__file__),
        "--models",
        str(args.models),
        "--ray-part",
        out_path,
    ]
    start = time.perf_counter()
    subprocess.run(cluster, check=True, capture_output=True)
    with_cluster = time.perf_counter() - start
    with open(out_path) as f:
        ray_run = json.load(f)
    ray_store = ResultsStore.load(ray_run["store"])
    identical = all(
        np.array_equal(ray_store.outputs(n), store_one.outputs(n)) for n in OUTPUT_NAMES
    )
    ideal = local_one / ray_run["cpus"]
    per_hour = lambda s: args.models * 3600 / s
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "models": args.models,
        "local_all_threads": {
            "threads": threads,
            "seconds": local_all,
            "models_per_hour": per_hour(local_all),
        },
        "local_one_thread": {"seconds": local_one, "models_per_hour": per_hour(local_one)},
        "ray_two_single_cpu_nodes": {
            "cpus": ray_run["cpus"],
            "seconds": ray_run["run_s"],
            "models_per_hour": per_hour(ray_run["run_s"]),
            "connect_seconds": ray_run["connect_s"],
            "cluster_start_to_stop_seconds": with_cluster,
            "overhead_vs_ideal": ray_run["run_s"] / ideal - 1,
            "identical_to_local_one_thread": identical,
        },
        "ray_over_local_all_threads": local_all / ray_run["run_s"],
        "ray_over_local_one_thread": local_one / ray_run["run_s"],
    }
    print(
        f"  ray, {ray_run['cpus']:g} single-CPU nodes: {ray_run['run_s']:5.1f} s  (connect "
        f"{ray_run['connect_s']:.2f} s; cluster up, run and down: {with_cluster:.1f} s)"
    )
    print(
        f"models per hour: local {threads} threads {per_hour(local_all):.0f}, local 1 thread "
        f"{per_hour(local_one):.0f}, ray {per_hour(ray_run['run_s']):.0f}"
    )
    print(
        f"ray / local ({threads} threads): {result['ray_over_local_all_threads']:.2f}x; "
        f"overhead vs the ideal (1-thread time / {ray_run['cpus']:g}): "
        f"{100 * result['ray_two_single_cpu_nodes']['overhead_vs_ideal']:+.1f}%"
    )
    print(f"ray store identical to the 1-thread local store: {identical}")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "ray_executor.json"), "w") as f:
        json.dump(result, f, indent=2)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
