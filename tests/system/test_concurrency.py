"""Two writers at once on the same datasets: real processes, the real database.

FiftyOne keeps a dataset's field list and run references in one document that
every change saves whole; two processes writing different run keys on the same
datasets must not lose one another's fields or runs.
"""

import os
import re
import subprocess
import sys

import fiftyone as fo
import fiftyone.core.odm as foo
import pytest
from helpers import HELPERS_DIR
from helpers.tiny import TINY_KWARGS, build_tiny_datasets

import transferscope as ts
from transferscope import writes

TESTS_DIR = os.path.dirname(HELPERS_DIR)
STAGED = re.compile(r"^ts[0-9a-f]{8}_")

_WRITER = """
import os, sys, time
sys.path.insert(0, {tests!r})
import fiftyone as fo
import transferscope as ts
from helpers.tiny import TINY_KWARGS
pre, tgt = fo.load_dataset(sys.argv[1]), fo.load_dataset(sys.argv[2])
key, store, barrier, trials = sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
for t in range(trials):
    while not os.path.exists(f"{{barrier}}.{{t}}"):
        time.sleep(0.002)
    try:
        ts.compute_class_influence(pre, tgt, key, output_dir=store, progress=False,
                                   overwrite=True, **TINY_KWARGS)
        print("TRIAL", t, "OK", flush=True)
    except Exception as e:
        import traceback
        where = " | ".join(
            f"{{f.filename.rsplit('/', 2)[-1]}}:{{f.lineno}} {{f.name}}"
            for f in traceback.extract_tb(e.__traceback__)[-6:]
        )
        print("TRIAL", t, "ERR", type(e).__name__, str(e).replace(chr(10), " ")[:300], "AT",
              where, flush=True)
"""


@pytest.fixture()
def persistent_pair(tmp_path):
    pre, tgt = build_tiny_datasets(tmp_path)
    for ds in (pre, tgt):
        ds.persistent = True  # the writers load them by name
    yield pre, tgt
    for ds in (pre, tgt):
        if not ds.deleted:
            ds.delete()


def _trial_line(proc, t):
    """The writer's line for trial ``t`` (other output, such as log lines, skipped)."""
    while True:
        line = proc.stdout.readline()
        if not line:
            return f"TRIAL {t} ERR the writer exited: {proc.stderr.read()[-2000:]}"
        if line.startswith(f"TRIAL {t} "):
            return line.strip()


def _problems(pre, tgt, keys):
    """What is missing or left over after both writers finished a trial."""
    found = []
    for ds, fields in ((tgt, ("helpful", "harmful", "accuracy")), (pre, ("influence",))):
        ds.reload()
        schema = ds.get_field_schema()
        for key in keys:
            if key not in ds.list_runs():
                found.append(f"{ds.name}: no run {key}")
            found += [
                f"{ds.name}: no field {key}_{f}" for f in fields if f"{key}_{f}" not in schema
            ]
        found += [f"{ds.name}: staged {f}" for f in schema if STAGED.match(f)]
    left = foo.get_db_conn()[writes.JOURNAL].count_documents(
        {"dataset": {"$in": [pre.name, tgt.name]}}
    )
    if left:
        found.append(f"{left} journal document(s) left")
    return found


@pytest.mark.slow
def test_two_processes_writing_different_keys_on_the_same_datasets_lose_nothing(
    persistent_pair, tmp_path
):
    pre, tgt = persistent_pair
    trials = 20
    keys = ("left", "right")
    barrier = str(tmp_path / "go")
    code = _WRITER.format(tests=TESTS_DIR)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, pre.name, tgt.name, key, str(tmp_path / key)]
            + [barrier, str(trials)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for key in keys
    ]
    failures = {}
    try:
        for t in range(trials):
            open(f"{barrier}.{t}", "w").close()  # both start this trial together
            lines = [_trial_line(p, t) for p in procs]
            problems = [line for line in lines if not line.endswith(" OK")]
            problems += _problems(pre, tgt, keys)
            if problems:
                failures[t] = problems
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=60)
    assert not failures, f"{len(failures)} of {trials} trials lost something: {failures}"


def test_a_stale_dataset_object_does_not_replace_a_run_committed_meanwhile(
    persistent_pair, tmp_path
):
    pre, tgt = persistent_pair
    stale_pre, stale_tgt = fo.load_dataset(pre.name), fo.load_dataset(tgt.name)
    # another process commits run "k" after this one loaded its dataset objects
    code = (
        f"import sys; sys.path.insert(0, {TESTS_DIR!r})\n"
        "import fiftyone as fo, transferscope as ts\n"
        "from helpers.tiny import TINY_KWARGS\n"
        f"ts.compute_class_influence(fo.load_dataset({pre.name!r}), "
        f"fo.load_dataset({tgt.name!r}), 'k', output_dir={str(tmp_path / 'a')!r}, "
        "progress=False, **TINY_KWARGS)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
    runs = foo.get_db_conn().runs
    committed = runs.find_one({"_dataset_id": tgt._doc.id, "key": "k"})["_id"]
    assert "k" not in stale_tgt._doc.runs  # this process's copy has not seen it
    with pytest.raises(ts.TransferScopeError, match="already has a run with key 'k'"):
        ts.compute_class_influence(
            stale_pre, stale_tgt, "k", output_dir=str(tmp_path / "b"), progress=False, **TINY_KWARGS
        )
    tgt.reload()
    assert tgt._doc.runs["k"].id == committed  # the other process's run, untouched


def test_a_run_committed_between_the_check_and_the_commit_is_not_replaced(
    persistent_pair, tmp_path, monkeypatch
):
    pre, tgt = persistent_pair
    ts.compute_class_influence(
        pre, tgt, "k", output_dir=str(tmp_path / "a"), progress=False, **TINY_KWARGS
    )
    first = tgt._doc.runs["k"].id
    # as if another process committed "k" after this call's check had passed
    monkeypatch.setattr(writes, "check_run_key_free", lambda *a, **k: None)
    with pytest.raises(ts.TransferScopeError, match="got a run with key 'k' from another process"):
        ts.compute_class_influence(
            pre, tgt, "k", output_dir=str(tmp_path / "b"), progress=False, **TINY_KWARGS
        )
    tgt.reload()
    assert tgt._doc.runs["k"].id == first
    assert not [f for f in tgt.get_field_schema() if STAGED.match(f)]
