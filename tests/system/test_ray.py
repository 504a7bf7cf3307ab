"""The Ray executor on a real two-node Ray cluster (head + one worker node).

The cluster lives in a private network namespace (loopback only; see
scripts/ray_local_cluster.py); the driver runs there too (tests/helpers/ray_driver.py)
and writes a results store that this test compares, bit for bit, with the
local executor's (same seeds, one thread per model on both sides).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import skip_unless_ci
from transferscope.compute import ResultsStore, open_store, run_subset_models
from transferscope.compute.executors import (
    LocalExecutor,
    ModelJob,
    ModelsFailedError,
    RayExecutor,
    make_executor,
)
from transferscope.compute.store import OUTPUT_NAMES

try:
    import ray
except ImportError:
    skip_unless_ci("Ray is not installed (pip install 'transferscope[ray]')")

from helpers import ray_driver  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _namespace_works():
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        return False


NO_NAMESPACE = (
    "needs a private network namespace (unshare -n, as root) for a loopback-only Ray cluster"
)
if not _namespace_works() and os.environ.get("TRANSFERSCOPE_CI") == "1":
    raise RuntimeError(f"CI must run the Ray cluster tests, but: {NO_NAMESPACE}")
needs_cluster = pytest.mark.skipif(not _namespace_works(), reason=NO_NAMESPACE)


def run_on_cluster(scenario, store_dir, workers=1):
    cmd = [
        "unshare",
        "-n",
        sys.executable,
        os.path.join(ROOT, "scripts", "ray_local_cluster.py"),
        f"--workers={workers}",
        "--",
        sys.executable,
        os.path.join(ROOT, "tests", "helpers", "ray_driver.py"),
        scenario,
        str(store_dir),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def written_rows(store_dir):
    with open(os.path.join(store_dir, "writes.jsonl")) as f:
        return [json.loads(line)["row"] for line in f]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """The same run on the local executor, one torch thread per model."""
    data = ray_driver.tiny_data()
    store = open_store(tmp_path_factory.mktemp("local") / "store", ray_driver.CONFIG, data)
    run_subset_models(ray_driver.CONFIG, data, store, executor=LocalExecutor(threads=1))
    return store


def assert_same_outputs(store, reference):
    assert store.is_complete()
    for name in OUTPUT_NAMES:
        np.testing.assert_array_equal(store.outputs(name), reference.outputs(name), err_msg=name)


@needs_cluster
@pytest.mark.slow
def test_ray_run_matches_local_and_refuses_what_it_cannot_run(tmp_path, local_reference):
    out = run_on_cluster("complete", tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert_same_outputs(ResultsStore.load(tmp_path / "store"), local_reference)
    rows = written_rows(tmp_path)
    assert sorted(rows) == list(range(ray_driver.CONFIG.num_models))  # each row once
    with open(tmp_path / "checks.json") as f:
        checks = json.load(f)
    assert checks["alive_nodes"] == 2
    # the images came from files and every node is this machine: mapped by path
    assert checks["images_shipped"] == "shared_path"
    assert "has 0 GPU in all; each model asks for 1" in checks["gpu_error"]
    # a model whose training raises is reported by row and reason; the other finishes
    assert list(checks["failures"]) == ["99"]
    assert "pretrain on no samples" in checks["failures"]["99"]
    assert checks["finished"] == [98]


@needs_cluster
@pytest.mark.slow
def test_killed_worker_node_still_completes_without_duplicates(tmp_path, local_reference):
    out = run_on_cluster("kill_worker", tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    with open(tmp_path / "checks.json") as f:
        checks = json.load(f)
    assert checks["alive_nodes"] == 1  # the worker node really died
    assert checks["images_shipped"] == "object_store"  # images in memory: by value
    assert checks["killed_tasks"]  # with a task of ours on it: the store is
    # complete below only because Ray retried that task elsewhere
    assert_same_outputs(ResultsStore.load(tmp_path / "store"), local_reference)
    assert sorted(written_rows(tmp_path)) == list(range(ray_driver.CONFIG.num_models))


@needs_cluster
@pytest.mark.slow
def test_run_killed_on_ray_resumes_locally(tmp_path, local_reference):
    out = run_on_cluster("kill_driver", tmp_path)
    assert out.returncode == 3, out.stdout + out.stderr
    done_on_ray = written_rows(tmp_path)
    assert len(done_on_ray) == 2
    store = open_store(tmp_path / "store", ray_driver.CONFIG, ray_driver.tiny_data())
    assert sorted(np.flatnonzero(store.completed)) == sorted(done_on_ray)
    trained = run_subset_models(
        ray_driver.CONFIG, ray_driver.tiny_data(), store, executor=LocalExecutor(threads=1)
    )
    assert sorted(trained + done_on_ray) == list(range(ray_driver.CONFIG.num_models))
    assert_same_outputs(store, local_reference)


@needs_cluster
@pytest.mark.slow
def test_delegated_operator_on_ray_reports_progress_and_matches_local(tmp_path):
    out = run_on_cluster("delegated", tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    with open(tmp_path / "checks.json") as f:
        checks = json.load(f)
    assert checks["run_state"] == "completed", checks
    assert checks["progress"] == pytest.approx(1.0)
    assert checks["label"] == "4/4 models trained"  # each Ray task's end reached the op
    assert checks["num_with_fields"] == 18
    assert checks["same_influence"] is True  # bit-identical to the local executor


# --- no cluster needed --------------------------------------------------------


def test_unreachable_address_fails_fast_and_names_it():
    with pytest.raises(ConnectionError, match=r"cannot reach the Ray cluster at '127\.0\.0\.1:9'"):
        RayExecutor(address="127.0.0.1:9", connect_timeout=2).check(ray_driver.CONFIG)
    assert not ray.is_initialized()


def test_operator_with_unreachable_cluster_names_it_and_writes_nothing(tiny_datasets):
    import fiftyone.operators as foo
    from helpers.tiny import operator_params

    pre, tgt = tiny_datasets
    params = operator_params(pre, tgt, "r", executor="ray", ray_address="127.0.0.1:9")
    with pytest.raises(Exception, match=r"cannot reach the Ray cluster at '127\.0\.0\.1:9'"):
        foo.execute_operator(
            "@transferscope/transferscope/compute_class_influence",
            ctx=dict(dataset=tgt, params=params),
        )
    assert not tgt.has_sample_field("r_helpful") and "r" not in tgt.list_runs()
    assert not pre.has_sample_field("r_influence")


@pytest.mark.parametrize("address", ["nonsense", "host:port", ""])
def test_malformed_addresses_are_refused(address):
    with pytest.raises(ValueError, match="ray address must be"):
        RayExecutor(address=address).check(ray_driver.CONFIG)


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'transferscope\[ray\]'"):
        RayExecutor(address="127.0.0.1:9").check(ray_driver.CONFIG)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(cpus_per_model=0), "cpus_per_model must be a positive integer"),
        (dict(gpus_per_model=-1), "gpus_per_model must be a number >= 0"),
        (dict(max_retries=-1), "max_retries must be an integer >= 0"),
        (dict(images="nfs"), "images must be one of"),
    ],
)
def test_bad_resources_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RayExecutor(**kwargs)


def test_make_executor():
    assert isinstance(make_executor("local", threads=1), LocalExecutor)
    assert make_executor("ray", address="127.0.0.1:9").address == "127.0.0.1:9"
    with pytest.raises(ValueError, match="apply to the ray executor only"):
        make_executor("local", address="auto")
    with pytest.raises(ValueError, match="executor must be one of"):
        make_executor("slurm")


def test_local_failures_are_reported_by_row_and_the_rest_are_stored(tmp_path):
    data = ray_driver.tiny_data()
    store = open_store(tmp_path / "store", ray_driver.CONFIG, data)
    broken = store.masks.copy()
    broken[2] = False  # row 2 now selects no class

    class BreakRow2(LocalExecutor):
        def run(self, jobs, data, on_done):
            jobs = [ModelJob(j.row, j.config, j.model_index, broken[j.row]) for j in jobs]
            return super().run(jobs, data, on_done)

    with pytest.raises(ModelsFailedError, match=r"row 2: ValueError: .*no samples") as err:
        run_subset_models(ray_driver.CONFIG, data, store, executor=BreakRow2(threads=1))
    assert list(err.value.failures) == [2]
    assert "5 of 6 models are stored" in str(err.value)
    assert store.pending() == [2]
    shutil.rmtree(tmp_path / "store")
