"""Nothing lost, nothing locked: every job killed at each point of its write, then
called again, ends in the state of an uninterrupted call; one writer per key.

Each trial runs the job in its own process (tests/helpers/crash_driver.py), which
SIGKILLs itself at an instrumented point of the write (transferscope.writes),
then runs the same call again to completion.
"""

import os
import subprocess
import sys
import time

import fiftyone as fo
import fiftyone.core.odm as foo
import numpy as np
import pytest
from helpers import HELPERS_DIR, crash_driver
from helpers.tiny import TINY_KWARGS, build_tiny_datasets

import transferscope as ts
from transferscope import writes

TESTS_DIR = os.path.dirname(HELPERS_DIR)  # where `helpers` imports from
DRIVER = os.path.join(HELPERS_DIR, "crash_driver.py")

# the points of a write, in order (transferscope.writes._checkpoint)
ALL_POINTS = [
    "field_staged",
    "commit_started",
    "old_removed",
    "field_renamed",
    "tagged",
    "views_saved",
    "inside_register_run",
    "run_registered",
    "record_saved",
    "committed",
]


def drive(job, pre, tgt, store, kill_at=None, overwrite=False):
    env = dict(os.environ)
    env.pop("TRANSFERSCOPE_KILL_AT", None)
    if kill_at:
        env["TRANSFERSCOPE_KILL_AT"] = kill_at
    cmd = [sys.executable, DRIVER, job, pre.name, tgt.name, str(store)]
    if overwrite:
        cmd.append("--overwrite")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    trained = [
        int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("TRAINED")
    ]
    return proc, (trained[0] if trained else None)


def _plain(value):
    if isinstance(value, fo.core.labels.Label):
        return _strip_ids(value.to_dict())
    if isinstance(value, float):
        return round(value, 9)
    return value


def _strip_ids(d):
    if isinstance(d, dict):
        return {k: _strip_ids(v) for k, v in d.items() if k != "_id"}
    if isinstance(d, list):
        return [_strip_ids(v) for v in d]
    return d


def snapshot(*datasets):
    """Everything a job may change: fields and values, tags, saved views, runs,
    run records, run documents in the database; and the write journal."""
    db = foo.get_db_conn()
    state = {}
    for ds in datasets:
        ds.reload()
        fields = sorted(ds.get_field_schema(flat=True))
        ours = [
            f
            for f in ds.get_field_schema()
            if f not in ("id", "filepath", "tags", "metadata", "created_at", "last_modified_at")
        ]
        values = {f: [_plain(v) for v in ds.values(f)] for f in sorted(ours)}
        runs = {}
        for key in ds.list_runs():
            config = ds.get_run_info(key).config
            runs[key] = {
                name: _strip_ids(getattr(config, name, None))
                for name in ("fields", "saved_views", "curation_tags", "method")
            }
            curation = getattr(config, "curation", None)
            runs[key]["curation_cells"] = (
                [c["per_seed"] for c in curation["cells"]] if curation else None
            )
        views = {
            name: sorted(ds.load_saved_view(name).values("id"))
            for name in sorted(ds.list_saved_views())
        }
        state[ds.name] = {
            "fields": fields,
            "values": values,
            "tags": sorted((i, tuple(sorted(t))) for i, t in zip(*ds.values(["id", "tags"]))),
            "views": views,
            "runs": runs,
            "run_docs": db.runs.count_documents({"_dataset_id": ds._doc.id}),
        }
    state["journal"] = db[writes.JOURNAL].count_documents(
        {"dataset": {"$in": [ds.name for ds in datasets]}}
    )
    return state


def without_staged(state):
    """A snapshot without the staged fields of an interrupted write (``ts<token>_...``)."""
    import re

    staged = re.compile(r"^ts[0-9a-f]{8}_")
    out = {}
    for name, s in state.items():
        if name == "journal":
            continue
        out[name] = dict(
            s,
            fields=[f for f in s["fields"] if not staged.match(f)],
            values={f: v for f, v in s["values"].items() if not staged.match(f)},
        )
    return out


@pytest.fixture()
def persistent_tiny(tmp_path):
    pre, tgt = build_tiny_datasets(tmp_path)
    for ds in (pre, tgt):
        ds.persistent = True
    # a prediction field with a few wrong answers, so explain_failures has failures
    test = tgt.match_tags("test")
    ids, labels = test.values(["id", "ground_truth.label"])
    wrong = {
        i: fo.Classification(label="t0" if l != "t0" else "t1")
        if n % 3 == 0
        else fo.Classification(label=l)
        for n, (i, l) in enumerate(zip(ids, labels))
    }
    test.set_values("wrong_guess", wrong, key_field="id")
    yield pre, tgt, tmp_path / "store"
    for ds in (pre, tgt):
        if not ds.deleted:
            ds.delete()


def with_influence_run(pre, tgt, tmp_path):
    ts.compute_class_influence(
        pre, tgt, "infl", output_dir=str(tmp_path / "infl"), progress=False, **TINY_KWARGS
    )


def undo(job, pre, tgt):
    """Back to the state before the job ran."""
    if job == "influence":
        for ds in (pre, tgt):
            if "k" in ds.list_runs():
                ds.delete_run("k")
    elif job in ("tagging", "retagging"):
        from transferscope.runs import run_record

        if run_record(pre, "infl", "curation_tags"):
            ts.untag_classes(pre, "infl")
    elif job == "curation":
        for ds in (pre, tgt):
            writes.set_run_record(ds, "infl", "curation", None)
    else:
        key = {
            "leakage": "leak",
            "duplicates": "dups",
            "subpopulations": "sub",
            "failures": "fail",
            "planner": "div",
            "samples": "samp",
        }[job]
        for ds in (pre, tgt):
            if key in ds.list_runs():
                ds.delete_run(key)


def again(job, pre, tgt, store, overwrite):
    """The same call, in this process (the killed one ran in its own)."""
    for ds in (pre, tgt):
        ds.reload()
    return crash_driver.run(job, pre, tgt, str(store), overwrite)


def kill_and_rerun(job, points, pre, tgt, store, overwrite=False, before=None):
    """For each point: kill there, run again; the state must equal the reference's."""
    if before:
        before()
    if job == "samples":
        # its store goes with its run, so every killed process trains and scores
        # anew: the reference is computed the same way, in a process of its own
        # (in this one, FAISS has left torch one thread, and other float sums)
        proc, _ = drive(job, pre, tgt, store, overwrite=overwrite)
        assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stderr[-3000:]
    else:
        again(job, pre, tgt, store, overwrite)
    reference = snapshot(pre, tgt)
    assert reference["journal"] == 0
    killed = 0
    for point in points:
        undo(job, pre, tgt)
        if before:
            before()
        proc, _ = drive(job, pre, tgt, store, kill_at=point, overwrite=overwrite)
        completed = point == "committed" or proc.returncode == 0
        if proc.returncode == -9:
            killed += 1
        else:  # this job's write has no such point (say, no record to save)
            assert proc.returncode == 0 and "DONE" in proc.stdout, proc.stderr[-3000:]
        # the same call again; where the first one had completed, with overwrite
        trained = again(
            job,
            pre,
            tgt,
            store,
            overwrite or (completed and job not in ("tagging", "retagging", "curation")),
        )
        if job in ("influence", "curation", "failures", "planner", "samples"):
            assert trained == 0, f"{job} killed at {point}: the rerun trained {trained} models"
        state = snapshot(pre, tgt)
        assert state == reference, f"{job} killed at {point}: state differs"
    return killed


@pytest.mark.slow
def test_ctrl_c_inside_the_commit_takes_effect_after_it_on_both_datasets(
    persistent_tiny, monkeypatch
):
    pre, tgt, store = persistent_tiny
    again("influence", pre, tgt, store, False)
    reference = snapshot(pre, tgt)
    monkeypatch.setenv("TRANSFERSCOPE_KILL_SIGNAL", "INT")
    for point in ("commit_started", "old_removed", "field_renamed", "run_registered"):
        undo("influence", pre, tgt)
        proc, _ = drive("influence", pre, tgt, store, kill_at=point)
        # the interrupt arrived, and acted once the commit was whole
        assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr, proc.stderr[-2000:]
        assert "DONE" not in proc.stdout
        for ds in (pre, tgt):
            ds.reload()
        assert snapshot(pre, tgt) == reference, f"interrupted at {point}: state differs"


@pytest.mark.slow
def test_influence_killed_anywhere_then_rerun_ends_as_an_uninterrupted_run(persistent_tiny):
    pre, tgt, store = persistent_tiny
    killed = kill_and_rerun("influence", ALL_POINTS, pre, tgt, store)
    assert killed >= 7  # every point but the record (this job saves none) and the end


@pytest.mark.slow
def test_influence_overwrite_killed_anywhere_keeps_the_old_run_until_its_commit(persistent_tiny):
    pre, tgt, store = persistent_tiny

    def old_run():  # a run with tags, which the overwrite must replace
        ts.compute_class_influence(
            pre, tgt, "k", output_dir=str(store), progress=False, overwrite=True, **TINY_KWARGS
        )
        ts.tag_classes(pre, "k", rule="most_harmful", k=1)

    old_run()
    old = snapshot(pre, tgt)
    # killed before the commit begins: the old run is intact, exactly
    proc, _ = drive("influence", pre, tgt, store, kill_at="field_staged", overwrite=True)
    assert proc.returncode == -9
    state = snapshot(pre, tgt)
    assert without_staged(state) == without_staged(old), "the old run changed"
    assert state["journal"] == 2  # the killed write's journals: the next write undoes them
    # then the same call, and kills later in the commit: the new run, as if never killed
    killed = kill_and_rerun(
        "influence",
        ["old_removed", "field_renamed", "run_registered"],
        pre,
        tgt,
        store,
        overwrite=True,
        before=old_run,
    )
    assert killed == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    "job, points",
    [
        ("tagging", ["commit_started", "old_removed", "tagged", "views_saved", "record_saved"]),
        (
            "leakage",
            [
                "field_staged",
                "commit_started",
                "field_renamed",
                "tagged",
                "views_saved",
                "inside_register_run",
                "run_registered",
            ],
        ),
        ("duplicates", ["field_staged", "tagged", "run_registered"]),
        ("subpopulations", ["field_staged", "views_saved", "run_registered"]),
        ("failures", ["field_staged", "run_registered"]),
        ("curation", ["commit_started", "record_saved"]),
        ("planner", ["views_saved", "run_registered"]),
        ("samples", ["field_staged", "commit_started", "field_renamed", "run_registered"]),
    ],
)
def test_each_job_killed_while_writing_then_rerun_ends_as_uninterrupted(
    persistent_tiny, tmp_path, job, points
):
    pre, tgt, store = persistent_tiny
    with_influence_run(pre, tgt, tmp_path)
    killed = kill_and_rerun(job, points, pre, tgt, store)
    assert killed == len(points)


@pytest.mark.slow
def test_retagging_killed_anywhere_keeps_the_first_choice_or_makes_the_second(
    persistent_tiny, tmp_path
):
    pre, tgt, store = persistent_tiny
    with_influence_run(pre, tgt, tmp_path)
    killed = kill_and_rerun(
        "retagging",
        ["commit_started", "old_removed", "tagged", "record_saved"],
        pre,
        tgt,
        store,
        before=lambda: ts.tag_classes(pre, "infl", rule="most_harmful", k=2),
    )
    assert killed == 4


_HOLD = """
import sys, time
sys.path.insert(0, {tests!r})
import fiftyone as fo
import transferscope as ts
from helpers.tiny import TINY_KWARGS
pre, tgt = fo.load_dataset(sys.argv[1]), fo.load_dataset(sys.argv[2])
while not __import__("os").path.exists(sys.argv[3]):
    time.sleep(0.01)
try:
    ts.compute_class_influence(pre, tgt, "same", output_dir=sys.argv[4], progress=False,
                               **{{**TINY_KWARGS, "num_models": 16, "epochs": 3}})
    print("COMPLETED")
except ts.TransferScopeError as e:
    print("REFUSED", e)
"""


@pytest.mark.slow
def test_two_processes_with_the_same_key_one_completes_the_other_is_refused(
    persistent_tiny, tmp_path
):
    pre, tgt, store = persistent_tiny
    go = tmp_path / "go"
    code = _HOLD.format(tests=TESTS_DIR)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, pre.name, tgt.name, str(go), str(tmp_path / f"store{i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    time.sleep(8)  # both imported and waiting
    go.write_text("go")
    outs = [p.communicate(timeout=600) for p in procs]
    lines = [o.strip().splitlines()[-1] if o.strip() else e[-2000:] for o, e in outs]
    assert sorted(line.split()[0] for line in lines) == ["COMPLETED", "REFUSED"], lines
    refused = next(line for line in lines if line.startswith("REFUSED"))
    assert "is being written by process" in refused and " since " in refused
    # the survivor's run is intact
    tgt.reload()
    assert "same" in tgt.list_runs() and tgt.match_tags("test").exists("same_helpful").count() == 18
    assert snapshot(pre, tgt)["journal"] == 0


def test_a_lock_whose_process_is_gone_is_taken_over(persistent_tiny, tmp_path):
    pre, tgt, store = persistent_tiny
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(dead.stdout)
    import psutil

    assert not psutil.pid_exists(pid)
    owner = {
        "host": writes.socket.gethostname(),
        "pid": pid,
        "started": 1.0,
        "since": "2026-01-01T00:00:00+00:00",
        "heartbeat": "2026-01-01T00:00:00+00:00",
    }
    for ds in (pre, tgt):
        foo.get_db_conn()[writes.JOURNAL].insert_one(
            {
                "_id": f"{ds._doc.id}:taken",
                "dataset": ds.name,
                "key": "taken",
                "method": "class_influence",
                "owner": owner,
                "phase": "locked",
                "staged": {},
                "tags": [],
                "views": [],
                "old": None,
            }
        )
    ts.compute_class_influence(
        pre, tgt, "taken", output_dir=str(store), progress=False, **TINY_KWARGS
    )
    assert "taken" in tgt.list_runs()
    assert snapshot(pre, tgt)["journal"] == 0


def test_a_live_holder_is_named_and_nothing_changes(persistent_tiny):
    pre, tgt, store = persistent_tiny
    with writes.RunWrite("held", "class_influence", [tgt]):
        before = snapshot(pre, tgt)
        with pytest.raises(
            writes.RunLockedError,
            match=rf"run key 'held' on dataset '{tgt.name}' is being written "
            rf"by process {os.getpid()} on ",
        ):
            ts.compute_class_influence(
                pre, tgt, "held", output_dir=str(store), progress=False, **TINY_KWARGS
            )
        after = snapshot(pre, tgt)
        assert {k: v for k, v in after.items()} == before


def test_an_exception_while_overwriting_leaves_the_old_run_intact(persistent_tiny, monkeypatch):
    pre, tgt, store = persistent_tiny
    ts.compute_class_influence(pre, tgt, "k", output_dir=str(store), progress=False, **TINY_KWARGS)
    old = snapshot(pre, tgt)
    real = fo.core.collections.SampleCollection.set_values

    def disk_full(self, field, *a, **k):
        if field.endswith("_k_influence"):  # the last staged field
            raise OSError(28, "No space left on device")
        return real(self, field, *a, **k)

    monkeypatch.setattr(fo.core.collections.SampleCollection, "set_values", disk_full)
    with pytest.raises(OSError, match="No space left"):
        ts.compute_class_influence(
            pre,
            tgt,
            "k",
            output_dir=str(store),
            progress=False,
            overwrite=True,
            **{**TINY_KWARGS, "epochs": 2},
        )
    assert snapshot(pre, tgt) == old
    # and the old run's models are still there
    store_path = tgt.get_run_info("k").config.output_dir
    assert os.path.exists(os.path.join(store_path, "completed.npy"))


def test_stores_are_found_by_dataset_id_never_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    made = []
    for name in ("rel_n", "rel_n/sub", f"../../{tmp_path.name}/escaped", "/srv/elsewhere/x"):
        pre, tgt = build_tiny_datasets(tmp_path, name=None)
        tgt.name = f"{name}-{len(made)}"
        results = ts.compute_class_influence(pre, tgt, "infl", progress=False, **TINY_KWARGS)
        path = os.path.realpath(results.config.output_dir)
        assert os.path.commonpath([str(tmp_path / "runs"), path]) == str(tmp_path / "runs")
        assert str(tgt._doc.id) in path
        made.append((pre, tgt, path))
    assert len({p for _, _, p in made}) == len(made)
    # overwriting one run never touches another's store
    pre, tgt, path = made[1]
    ts.compute_class_influence(
        pre, tgt, "infl", progress=False, overwrite=True, **{**TINY_KWARGS, "epochs": 2}
    )
    for _, _, other in (made[0], made[2], made[3]):
        assert os.path.exists(os.path.join(other, "completed.npy"))
    for pre, tgt, _ in made:
        pre.delete()
        tgt.delete()


def test_a_damaged_store_is_named_and_overwrite_rebuilds_it(tiny_datasets, tmp_path):
    pre, tgt = tiny_datasets
    results = ts.compute_class_influence(
        pre, tgt, "infl", output_dir=str(tmp_path / "s"), progress=False, **TINY_KWARGS
    )
    store = results.config.output_dir
    good = results.class_influence.copy()
    for ds in (pre, tgt):
        ds.delete_run("infl")
    prob = os.path.join(store, "prob.npy")
    half = os.path.getsize(prob) // 2
    with open(prob, "r+b") as f:
        f.truncate(half)
    with pytest.raises(ts.TransferScopeError, match=r"prob.npy is \d+ bytes, expected"):
        ts.compute_class_influence(
            pre, tgt, "infl", output_dir=str(tmp_path / "s"), progress=False, **TINY_KWARGS
        )
    assert os.path.getsize(prob) == half  # never zero-extended
    again = ts.compute_class_influence(
        pre,
        tgt,
        "infl",
        output_dir=str(tmp_path / "s"),
        progress=False,
        overwrite=True,
        **TINY_KWARGS,
    )
    np.testing.assert_allclose(again.class_influence, good)
    for ds in (pre, tgt):
        ds.delete_run("infl")
    spec = os.path.join(store, "spec.json")
    with open(spec, "w") as f:
        f.write("{not json")
    with pytest.raises(ts.TransferScopeError, match="spec.json is unreadable"):
        ts.compute_class_influence(
            pre, tgt, "infl", output_dir=str(tmp_path / "s"), progress=False, **TINY_KWARGS
        )
    ts.compute_class_influence(
        pre,
        tgt,
        "infl",
        output_dir=str(tmp_path / "s"),
        progress=False,
        overwrite=True,
        **TINY_KWARGS,
    )


def test_a_zeroed_completed_row_is_retrained_not_used(tiny_datasets, tmp_path):
    pre, tgt = tiny_datasets
    results = ts.compute_class_influence(
        pre, tgt, "infl", output_dir=str(tmp_path / "s"), progress=False, **TINY_KWARGS
    )
    good = results.class_influence.copy()
    for ds in (pre, tgt):
        ds.delete_run("infl")
    prob = np.load(os.path.join(results.config.output_dir, "prob.npy"), mmap_mode="r+")
    prob[2] = 0
    prob.flush()
    del prob
    seen = []
    again = ts.compute_class_influence(
        pre,
        tgt,
        "infl",
        output_dir=str(tmp_path / "s"),
        progress=lambda d, t: seen.append(d),
        **TINY_KWARGS,
    )
    assert seen == [4]  # one model (row 2) retrained: the fourth of four
    np.testing.assert_allclose(again.class_influence, good, atol=1e-6)


def test_output_dir_that_is_empty_or_holds_a_users_files_is_refused(
    tiny_datasets, tmp_path, monkeypatch
):
    pre, tgt = tiny_datasets
    monkeypatch.chdir(tmp_path)
    (tmp_path / "project.json").write_text("{}")
    with pytest.raises(ts.TransferScopeError, match="output_dir must name a directory"):
        ts.compute_class_influence(pre, tgt, "infl", output_dir="", **TINY_KWARGS)
    users = tmp_path / "users"
    users.mkdir()
    (users / "features.npy").write_bytes(b"x")
    with pytest.raises(ts.TransferScopeError, match="holds files transferscope did not write"):
        ts.compute_class_influence(pre, tgt, "infl", output_dir=str(users), **TINY_KWARGS)
    assert (tmp_path / "project.json").exists() and (users / "features.npy").exists()
    assert "infl" not in tgt.list_runs()
