"""The driver the Ray tests run inside a throwaway cluster (see test_ray.py).

    python tests/helpers/ray_driver.py SCENARIO STORE_DIR

Scenarios:
    complete      train every model on the cluster
    kill_worker   SIGKILL a worker node's process group after the first model
                  is stored (tasks on it are lost and must be retried)
    kill_driver   exit abruptly after two models are stored (resumed elsewhere)
    delegated     FiftyOne (its own database, in the namespace): queue
                  compute_class_influence with executor "ray" as a delegated
                  operation, run it with `fiftyone delegated launch`, and
                  compare its influence with a local run of the SDK

Every store write is appended to STORE_DIR/writes.jsonl (row, time), so the
test can check that no row was written twice.
"""

import dataclasses
import json
import os
import signal
import sys
import time

import numpy as np


def isolate_fiftyone(out_dir):
    """FiftyOne settings for the delegated scenario: read when fiftyone is imported."""
    os.environ.update(
        FIFTYONE_DATABASE_DIR=os.path.join(out_dir, "db"),  # a mongod in here
        FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS="true",
        FIFTYONE_SHOW_PROGRESS_BARS="false",
        FIFTYONE_DO_NOT_TRACK="true",
        FIFTYONE_DATABASE_VALIDATION="false",
    )
    for inherited in ("FIFTYONE_DATABASE_URI", "FIFTYONE_PRIVATE_DATABASE_PORT"):
        os.environ.pop(inherited, None)  # the test process's mongod is outside the namespace
    plugins = os.path.join(out_dir, "plugins")
    os.makedirs(plugins)
    os.symlink(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        os.path.join(plugins, "transferscope"),
    )
    os.environ["FIFTYONE_PLUGINS_DIR"] = plugins
    os.environ.setdefault("TRANSFERSCOPE_RUNS_DIR", os.path.join(out_dir, "runs"))


if __name__ == "__main__" and sys.argv[1:2] == ["delegated"]:
    isolate_fiftyone(sys.argv[2])  # before transferscope imports fiftyone

from transferscope.compute import InfluenceConfig, TransferData, open_store, run_subset_models
from transferscope.compute.executors import ModelJob, RayExecutor

CONFIG = InfluenceConfig(num_models=6, epochs=5, device="cpu", width=8)


def tiny_data():
    """Deterministic synthetic images: 6 pretraining classes, 3 target classes."""
    rng = np.random.default_rng(7)

    def split(n, classes):
        labels = np.arange(n) % classes
        base = rng.integers(0, 255, (classes, 16, 16, 1))
        noise = rng.integers(-40, 40, (n, 16, 16, 1))
        return np.clip(base[labels] + noise, 0, 255).astype(np.uint8), labels

    pre, pre_y = split(600, 6)
    train, train_y = split(90, 3)
    test, test_y = split(60, 3)
    return TransferData(pre, pre_y, 6, train, train_y, test, test_y, 3)


def read_from_files(data, folder):
    """The same data, its images memory-mapped from ``.npy`` files as the
    image cache hands them over (so the executor can ship them by path)."""
    os.makedirs(folder)
    mapped = {}
    for name in ("pretrain_images", "train_images", "test_images"):
        path = os.path.join(folder, f"{name}.npy")
        np.save(path, getattr(data, name))
        mapped[name] = np.load(path, mmap_mode="r")
    return dataclasses.replace(data, **mapped)


def main(scenario, store_dir):
    data = tiny_data()
    if scenario == "complete":
        data = read_from_files(data, os.path.join(store_dir, "images"))
    # the store in its own folder: a store folder holds only what transferscope wrote
    store = open_store(os.path.join(store_dir, "store"), CONFIG, data)
    log = open(os.path.join(store_dir, "writes.jsonl"), "a")
    workers = [int(p) for p in os.environ.get("TS_RAY_WORKER_PGIDS", "").split(",") if p]

    written = 0
    checks = {}

    def on_model_done(row, done, total):
        nonlocal written
        written += 1
        log.write(json.dumps({"row": row, "done": done}) + "\n")
        log.flush()
        if scenario == "kill_worker" and written == 1 and workers:
            # kill the node while one of our tasks runs there, so that it must be retried
            checks["killed_tasks"] = kill_node(workers[0])
        if scenario == "kill_driver" and written == 2:
            os._exit(3)

    executor = RayExecutor(address=os.environ["RAY_ADDRESS"], cpus_per_model=1)
    executor.check(CONFIG)
    if scenario == "complete":
        checks.update(refusals(executor, data))
    run_subset_models(CONFIG, data, store, on_model_done, executor=executor)
    checks["images_shipped"] = executor.images_shipped
    with executor.session():
        checks["alive_nodes"] = alive_nodes(expect=1 if scenario == "kill_worker" else 2)
    with open(os.path.join(store_dir, "checks.json"), "w") as f:
        json.dump(checks, f)


def tasks_on_node(pgid, timeout=60):
    """Pids of our tasks running on the node whose processes form group ``pgid``.

    Ray titles a worker ``ray::_remote_job`` while it runs one of our tasks
    (``ray::IDLE`` otherwise); workers have their own session, so they are
    found by their parent, the node's raylet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if not f.read().startswith(b"ray::_remote_job"):
                        continue
                with open(f"/proc/{pid}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
                if os.getpgid(parent) == pgid:
                    found.append(int(pid))
            except (OSError, ValueError):
                continue
        if found:
            return found
        time.sleep(0.05)
    return []


def kill_node(pgid):
    """SIGKILL a whole node, as a lost machine: its processes and its task workers."""
    running = tasks_on_node(pgid)
    os.killpg(pgid, signal.SIGKILL)
    for pid in running:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return running


def alive_nodes(expect, timeout=60):
    """Alive nodes, once Ray agrees with ``expect`` (it notices a dead node late)."""
    import ray

    deadline = time.monotonic() + timeout
    while True:
        alive = sum(n["Alive"] for n in ray.nodes())
        if alive == expect or time.monotonic() > deadline:
            return alive
        time.sleep(1)


def refusals(executor, data):
    """What the cluster refuses: GPUs it lacks, a model whose training raises."""
    out = {}
    try:
        RayExecutor(address=executor.address, gpus_per_model=1).check(
            InfluenceConfig.from_dict({**CONFIG.to_dict(), "device": "cuda"})
        )
    except ValueError as e:
        out["gpu_error"] = str(e)
    no_classes = ModelJob(99, CONFIG, 0, np.zeros(6, dtype=bool))
    finished = []
    out["failures"] = executor.run(
        [no_classes, ModelJob(98, CONFIG, 0, np.ones(6, dtype=bool))],
        data,
        lambda row, outputs: finished.append(row),
    )
    out["finished"] = finished
    return out


def delegated(out_dir):
    """The operator on Ray as a delegated operation; results in checks.json."""
    import subprocess

    import fiftyone.operators as foo
    import fiftyone.operators.delegated as food
    from fiftyone.operators.executor import ExecutionRunState
    from tiny import build_tiny_datasets, operator_params

    from transferscope import compute_class_influence

    images = os.path.join(out_dir, "images")
    os.makedirs(images)
    pre, tgt = build_tiny_datasets(images, "ray")
    pre.persistent = tgt.persistent = True  # the worker process loads them by name
    params = operator_params(
        pre, tgt, "viaray", executor="ray", cpus_per_model=1, ray_address=os.environ["RAY_ADDRESS"]
    )
    queued = foo.execute_operator(
        "@transferscope/transferscope/compute_class_influence",
        ctx=dict(dataset=tgt, params=params),
        request_delegation=True,
    )
    dos = food.DelegatedOperationService()
    exe = os.path.join(os.path.dirname(sys.executable), "fiftyone")
    worker = subprocess.Popen(
        [exe, "delegated", "launch"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            op = dos.get(
                queued.id
                if hasattr(queued, "id")
                else dos.list_operations(dataset_name=tgt.name)[0].id
            )
            if op.run_state in ExecutionRunState.TERMINAL_STATES:
                break
            time.sleep(1)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    tgt.reload()
    checks = {
        "run_state": op.run_state,
        "progress": op.status.progress if op.status else None,
        "label": op.status.label if op.status else None,
        "error": str(op.run_link or "") + str(getattr(op.result, "error", "") or ""),
        "num_with_fields": tgt.match_tags("test").exists("viaray_helpful").count(),
    }
    if "viaray" in tgt.list_runs():
        local = compute_class_influence(
            pre,
            tgt,
            "local",
            num_models=params["num_models"],
            epochs=params["epochs"],
            device="cpu",
            seed=0,
            progress=False,
            executor_options={"threads": 1},
        )
        via_ray = tgt.load_run_results("viaray")
        checks["same_influence"] = bool(np.array_equal(local.influence, via_ray.influence))
    with open(os.path.join(out_dir, "checks.json"), "w") as f:
        json.dump(checks, f)


if __name__ == "__main__":
    scenario, out_dir = sys.argv[1], sys.argv[2]
    if scenario == "delegated":
        delegated(out_dir)
    elif scenario in ("complete", "kill_worker", "kill_driver"):
        main(scenario, out_dir)
    else:
        sys.exit(f"unknown scenario {scenario!r}")
