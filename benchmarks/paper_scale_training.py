"""The training side of a class-influence run at paper scale: 1,000 classes.

Synthetic RGB data (1,000 pretraining classes of N images at 32 px, a
10-class target task of T train and T test images) is written as ``.npy``
files and memory-mapped, as the decoded-image cache hands it to training.
Then, timed, with the process's peak memory sampled from /proc every 10 ms
above what it held before the stage (anonymous memory: what the process
allocated; file-backed: pages of the memory-mapped images it touched, and
of libraries it loaded, which the kernel can drop):

1. the per-channel statistics of the pretraining images;
2. subset models (pretrain ``--epochs`` on a random half of the classes,
   linear probe on the T train images, outputs on the T test images), at
   N/4 and N images to show how a model's time and memory grow with N;
3. the estimator on an orthogonal design of ``--design-models`` models
   (C = 1,000 classes, T targets; outputs drawn at random, as only the
   shapes set its cost).

Registering, loading, the panel and ``delete_run`` at this scale are
``run_results_scale.py``; decoding is ``decode_memory.py``.

    .venv/bin/python benchmarks/paper_scale_training.py                # N = 200,000, T = 10,000
    .venv/bin/python benchmarks/paper_scale_training.py --size 64 --images 40000 \
        --targets 2000 --results paper_scale_training_64px.json

Writes benchmarks/results/paper_scale_training.json (or ``--results``).
"""

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from functools import partial

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transferscope.compute.train import channel_mean_std  # noqa: E402

from transferscope import compute as tsc  # noqa: E402


class MemorySampler:
    """Peaks of this process's anonymous and file-backed resident memory."""

    def __init__(self, interval=0.01):
        self.interval = interval
        self._stop = threading.Event()
        self.peak = {"anon": 0, "file": 0}
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now():
        with open("/proc/self/status") as f:
            status = f.read()
        kb = {k: int(v) for k, v in re.findall(r"Rss(Anon|File):\s+(\d+) kB", status)}
        return {"anon": kb["Anon"] * 1024, "file": kb["File"] * 1024}

    def _run(self):
        while not self._stop.is_set():
            for k, v in self.now().items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(self.interval)

    def __enter__(self):
        self.start = self.now()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        for k, v in self.now().items():
            self.peak[k] = max(self.peak[k], v)

    def report(self):
        mb = 2**20
        return {
            "anon_peak_extra_mb": round((self.peak["anon"] - self.start["anon"]) / mb, 1),
            "file_peak_extra_mb": round((self.peak["file"] - self.start["file"]) / mb, 1),
        }


def stage(fn):
    with MemorySampler() as memory:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    return out, {"s": round(seconds, 2), **memory.report()}


def write_images(path, labels, size, seed, centres):
    """Images of class ``c``: the class's colour pattern plus noise, written
    chunk by chunk into a ``.npy`` file; returns it memory-mapped."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.uint8, shape=(len(labels), size, size, 3)
    )
    for i in range(0, len(labels), 8192):
        y = labels[i : i + 8192]
        noise = rng.normal(0, 40, (len(y), size, size, 3))
        out[i : i + len(y)] = np.clip(centres[y] + noise, 0, 255).astype(np.uint8)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--images", type=int, default=200_000, help="pretraining images N")
    parser.add_argument("--targets", type=int, default=10_000, help="target train and test T each")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--models", type=int, default=2, help="models per N")
    parser.add_argument(
        "--design-models", type=int, default=1024, help="at least this many (whole blocks)"
    )
    parser.add_argument("--folder", default=None, help="default: a temporary folder, removed")
    parser.add_argument("--results", default="paper_scale_training.json", help="file in results/")
    args = parser.parse_args()
    C, N, T, S = args.classes, args.images, args.targets, args.size

    folder = args.folder or tempfile.mkdtemp(prefix="paper-scale-")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    try:
        pattern = rng.uniform(40, 215, (C + 10, 4, 4, 3))
        centres = np.repeat(np.repeat(pattern, S // 4, axis=1), S // 4, axis=2)
        t0 = time.perf_counter()
        pre_y = np.arange(N) % C
        pretrain = write_images(os.path.join(folder, "pretrain.npy"), pre_y, S, 1, centres[:C])
        target_y = np.arange(T) % 10
        train = write_images(os.path.join(folder, "train.npy"), target_y, S, 2, centres[C:])
        test = write_images(os.path.join(folder, "test.npy"), target_y, S, 3, centres[C:])
        write_s = time.perf_counter() - t0
        u_mb = pretrain.nbytes / 2**20

        _, statistics = stage(lambda: channel_mean_std(pretrain))
        config = tsc.InfluenceConfig(
            num_models=args.models, image_size=S, channels=3, epochs=args.epochs, device="cpu"
        )
        training = []
        for n in sorted({N // 4, N}):
            data = tsc.TransferData(pretrain[:n], pre_y[:n], C, train, target_y, test, target_y, 10)
            masks = tsc.make_design("balanced", args.models, C, seed=n).masks
            per_model = []
            for k in range(args.models):
                _, figures = stage(partial(tsc.train_subset_model, config, k, masks[k], data))
                per_model.append(figures)
            training.append(
                {
                    "pretrain_images": n,
                    "images_per_model": int(n * masks.mean()),
                    "uint8_mb": round(n * S * S * 3 / 2**20, 1),
                    "models": per_model,
                }
            )

        design = tsc.make_design("orthogonal", args.design_models, C, seed=0)
        outputs = rng.random((len(design.masks), T), dtype=np.float32)
        _, estimation = stage(lambda: tsc.estimate_influence(design.masks, outputs, "auto"))

        # a model's time as fixed + per-image cost, from the last (warm) model at each N
        (n0, t0), (n1, t1) = [(t["images_per_model"], t["models"][-1]["s"]) for t in training]
        per_image_s = (t1 - t0) / (n1 - n0)
        fixed_s = t0 - per_image_s * n0
        out = {
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "classes": C,
            "pretrain_images": N,
            "targets": T,
            "size": S,
            "epochs": args.epochs,
            "arch": f"{config.arch} width {config.width}",
            "write_synthetic_s": round(write_s, 1),
            "pretrain_uint8_mb": round(u_mb, 1),
            "statistics": statistics,
            "training": training,
            "estimate": {"models": int(len(design.masks)), **estimation},
            "per_model_fit": {
                "fixed_s": round(fixed_s, 1),
                "ms_per_pretraining_image": round(per_image_s * 1e3, 3),
            },
            "projection_1_28M": {
                "images_per_model": 640_000,
                "s_per_model_same_net_and_size": round(fixed_s + per_image_s * 640_000),
                "uint8_gb_32px": round(1.28e6 * 32 * 32 * 3 / 1e9, 1),
                "uint8_gb_64px": round(1.28e6 * 64 * 64 * 3 / 1e9, 1),
            },
        }
        print(json.dumps(out, indent=2))
        results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        with open(os.path.join(results, os.path.basename(args.results)), "w") as f:
            json.dump(out, f, indent=2)
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
