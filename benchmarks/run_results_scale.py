"""Bookkeeping of a class-influence run at paper scale: 1,000 classes x T targets.

No training: a run's results (random figures of the real shapes) are written
as ``compute_class_influence`` writes them, and timed on the real database:
saving the two ``(C, T)`` float32 matrices to the store, registering the run,
loading its results, a panel click (one class's row, sorted), the chart's
trace, and ``delete_run``; with the peak of Python-tracked memory for each
(tracemalloc, which numpy reports to).

    .venv/bin/python benchmarks/run_results_scale.py --classes 1000 --targets 50000

Writes benchmarks/results/run_results_scale.json.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc

os.environ.setdefault("FIFTYONE_DATABASE_NAME", "transferscope_benchmarks")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fiftyone as fo  # noqa: E402
import numpy as np  # noqa: E402
from bson import ObjectId  # noqa: E402

from transferscope.influence_run import save_matrices  # noqa: E402
from transferscope.plots import influence_plotly  # noqa: E402
from transferscope.runs import ClassInfluenceConfig, ClassInfluenceResults  # noqa: E402


def timed(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, {"s": round(seconds, 3), "peak_mb": round(peak / 2**20, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--targets", type=int, default=50000)
    args = parser.parse_args()
    C, T = args.classes, args.targets
    rng = np.random.default_rng(0)
    classes = [f"class_{i:04d}" for i in range(C)]
    target_ids = [str(ObjectId()) for _ in range(T)]
    ci = rng.normal(size=C)
    kwargs = dict(
        influence=rng.normal(size=(C, T)).astype(np.float32),
        stderr=rng.random((C, T), dtype=np.float32),
        class_influence=ci,
        class_stderr=np.full(C, 0.1),
        class_ci_low=ci - 0.2,
        class_ci_high=ci + 0.2,
        class_p_value=rng.random(C),
        class_q_value=rng.random(C),
        metrics={"num_models": 0},
    )
    name = f"run-results-scale-{C}x{T}"
    if fo.dataset_exists(name):
        fo.delete_dataset(name)
    dataset = fo.Dataset(name)
    store = tempfile.mkdtemp(prefix="transferscope-bench-")
    report = {"machine": platform.machine(), "classes": C, "targets": T}

    (_, kwargs), report["save_matrices"] = timed(
        lambda: save_matrices(store, kwargs, "prob", "ols")
    )

    def register():
        config = ClassInfluenceConfig(fields=[], output_dir=store)
        results = ClassInfluenceResults(
            dataset, config, "infl", classes=classes, target_ids=target_ids, **kwargs
        )
        dataset.register_run("infl", config)
        dataset.save_run_results("infl", results, cache=False)

    _, report["register"] = timed(register)
    loaded, report["load_results"] = timed(lambda: dataset.load_run_results("infl", cache=False))
    _, report["panel_chart"] = timed(lambda: influence_plotly(loaded, top_n=40))

    def click():
        row = loaded.influence[C // 2]
        order = np.argsort(-row, kind="stable")[:24]
        return [loaded.target_ids[i] for i in order]

    _, report["panel_click_row"] = timed(click)
    _, report["delete_run"] = timed(lambda: dataset.delete_run("infl"))
    fo.delete_dataset(name)
    for f in os.listdir(store):
        if f.endswith(".npy") or f == "transferscope-files.json":
            os.remove(os.path.join(store, f))
    os.rmdir(store)
    print(json.dumps(report, indent=2))
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "run_results_scale.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
