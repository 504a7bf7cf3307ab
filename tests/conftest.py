"""Test set-up: the real FiftyOne database, isolated by a per-session name.

Everything is set before fiftyone is imported; the database is dropped at the
end of the session.
"""

import os
import shutil
import sys
import tempfile
import uuid

import pytest
from helpers.tiny import TINY_KWARGS, build_tiny_datasets

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TMP = tempfile.mkdtemp(prefix="transferscope-tests-")
_PLUGINS = os.path.join(_TMP, "plugins")
os.makedirs(_PLUGINS)
os.symlink(REPO_ROOT, os.path.join(_PLUGINS, "transferscope"))

os.environ["FIFTYONE_DATABASE_NAME"] = f"transferscope_test_{uuid.uuid4().hex[:8]}"
os.environ["FIFTYONE_DO_NOT_TRACK"] = "true"
os.environ["FIFTYONE_SHOW_PROGRESS_BARS"] = "false"
os.environ["FIFTYONE_DATABASE_VALIDATION"] = "false"
os.environ["FIFTYONE_PLUGINS_DIR"] = _PLUGINS
os.environ["FIFTYONE_ALLOW_LEGACY_ORCHESTRATORS"] = "true"
os.environ["TRANSFERSCOPE_RUNS_DIR"] = os.path.join(_TMP, "runs")
os.environ["TRANSFERSCOPE_DATA_DIR"] = os.path.join(_TMP, "demo_data")
os.environ["TRANSFERSCOPE_IMAGE_CACHE"] = os.path.join(_TMP, "image_cache")
os.environ["TRANSFERSCOPE_GROUP_SIZE_CACHE"] = os.path.join(_TMP, "group_sizes.json")
os.environ["TRANSFERSCOPE_MODELS_DIR"] = os.path.join(_TMP, "models")


# Test tiers: a test's folder is its marker. unit: no database; integration: the
# real database and tiny runs; system: other processes (a Ray cluster, a browser,
# processes killed on purpose); acceptance: the demo.
TIERS = ("unit", "integration", "system", "acceptance")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = item.path.parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.path} is in no test tier folder {TIERS}")
        item.add_marker(getattr(pytest.mark, tier))


def pytest_sessionfinish(session, exitstatus):
    try:
        fod = sys.modules.get("fiftyone.core.odm.database")
        if fod is not None and fod._client is not None:  # unit-only: never connected
            fod.drop_database()
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def tmp_root():
    return _TMP


@pytest.fixture()
def tiny_datasets(tmp_path):
    """A 6-class pretraining set and a 3-class target (train/test tags)."""
    pre, tgt = build_tiny_datasets(tmp_path)
    yield pre, tgt
    for ds in (pre, tgt):
        if not ds.deleted:
            ds.delete()


@pytest.fixture(scope="session")
def tiny_store_factory(tmp_path_factory):
    """``store(**overrides)``: the folder of a trained tiny class-influence run
    (TINY_KWARGS with ``overrides``), trained once per session."""
    import transferscope as ts

    stores = {}

    def store(**overrides):
        key = tuple(sorted(overrides.items()))
        if key not in stores:
            folder = tmp_path_factory.mktemp("tiny_run")
            pre, tgt = build_tiny_datasets(folder / "images")
            kwargs = {**TINY_KWARGS, **overrides}
            out = str(folder / "store")
            ts.compute_class_influence(pre, tgt, "infl", output_dir=out, progress=False, **kwargs)
            pre.delete()
            tgt.delete()
            stores[key] = folder / "store"
        return stores[key]

    return store


@pytest.fixture()
def make_tiny_run(tiny_datasets, tiny_store_factory, tmp_path):
    """``run(**overrides)``: the tiny datasets with class-influence run ``"infl"``
    written on them, from a copy of the session's trained models (no training)."""
    import transferscope as ts

    def run(**overrides):
        pre, tgt = tiny_datasets
        store = tmp_path / "store"
        shutil.copytree(tiny_store_factory(**overrides), store)
        kwargs = {**TINY_KWARGS, **overrides}
        results = ts.compute_class_influence(
            pre, tgt, "infl", output_dir=str(store), progress=False, **kwargs
        )
        return pre, tgt, results

    return run


@pytest.fixture()
def tiny_run(make_tiny_run):
    """``(pretrain, target, results)``: the tiny datasets with run ``"infl"``."""
    return make_tiny_run()
