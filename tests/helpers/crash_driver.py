"""Runs one transferscope job in its own process, for the kill-anywhere tests.

    python crash_driver.py JOB PRETRAIN TARGET STORE_DIR [--overwrite]

With ``TRANSFERSCOPE_KILL_AT=<point>`` in the environment the process SIGKILLs
itself at that point of the job's write (see transferscope.writes); the
point ``inside_register_run`` kills it inside FiftyOne's ``register_run``,
after the run document is saved and before the dataset references it.
Prints ``TRAINED <n>`` (models trained by this call) and ``DONE`` at the end.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fiftyone as fo  # noqa: E402
from tiny import TINY_KWARGS  # noqa: E402

import transferscope as ts  # noqa: E402


def _kill_inside_register_run():
    import fiftyone.core.odm.runs as odm_runs

    real_save = odm_runs.RunDocument.save

    def save(self, *args, **kwargs):
        out = real_save(self, *args, **kwargs)
        if kwargs.get("upsert"):  # save_run_info's save, before dataset.save()
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    odm_runs.RunDocument.save = save


def run(job, pre, tgt, store, overwrite):
    """Runs the job; returns the number of models it trained."""
    trained = []

    def progress(done, total):
        trained.append(done)

    if job == "influence":
        ts.compute_class_influence(
            pre, tgt, "k", output_dir=store, progress=progress, overwrite=overwrite, **TINY_KWARGS
        )
    elif job == "samples":
        ts.compute_sample_influence(
            pre,
            tgt,
            "samp",
            influence_key="infl",
            num_models=2,
            holdout_models=0,
            output_dir=os.path.join(store, "samples"),
            overwrite=overwrite,
            progress=progress,
        )
    elif job == "tagging":
        ts.tag_classes(pre, "infl", rule="most_harmful", k=2)
    elif job == "retagging":
        ts.tag_classes(pre, "infl", rule="most_harmful", k=3)
    elif job == "leakage":
        ts.detect_leakage(
            tgt, key="leak", influence_key="infl", max_distance=0.05, overwrite=overwrite
        )
    elif job == "duplicates":
        ts.find_near_duplicates(
            pre, key="dups", influence_key="infl", max_distance=0.05, overwrite=overwrite
        )
    elif job == "subpopulations":
        ts.find_subpopulations(tgt, "infl", key="sub", k=2, overwrite=overwrite)
    elif job == "failures":
        ts.explain_failures(
            tgt,
            "infl",
            key="fail",
            max_seeds=2,
            round_seeds=2,
            overwrite=overwrite,
            progress=progress,
            pred_field="wrong_guess",
        )
    elif job == "curation":
        ts.evaluate_curation(
            tgt, "infl", rule="most_harmful", k=1, max_seeds=4, round_seeds=2, progress=progress
        )
    elif job == "planner":
        ts.plan_class_diversity(
            tgt,
            "infl",
            key="div",
            budgets=[12, 20],
            full_budget=30,
            num_points=4,
            num_seeds=2,
            max_seeds=4,
            round_seeds=2,
            sample_choice="random",
            overwrite=overwrite,
            progress=progress,
        )
    else:
        raise SystemExit(f"unknown job {job}")
    return len(trained)


if __name__ == "__main__":
    job, pre_name, tgt_name, store = sys.argv[1:5]
    if os.environ.get("TRANSFERSCOPE_KILL_AT") == "inside_register_run":
        _kill_inside_register_run()
    n = run(
        job, fo.load_dataset(pre_name), fo.load_dataset(tgt_name), store, "--overwrite" in sys.argv
    )
    print(f"TRAINED {n}", flush=True)
    print("DONE", flush=True)
