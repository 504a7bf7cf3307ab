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

from tiny import TINY_KWARGS, _pattern, build_tiny_datasets  # noqa: F401 (used by tests)

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
os.environ["TRANSFERSCOPE_MODELS_DIR"] = os.path.join(_TMP, "models")


# Test tiers (markers, given by module): unit tests touch no database; integration
# tests use the real database and tiny runs; system tests start other processes
# (a Ray cluster, a browser, processes killed on purpose); acceptance is the demo.
UNIT_MODULES = {
    "test_curation_compute",
    "test_designs",
    "test_digests",
    "test_diversity_compute",
    "test_engine",
    "test_estimators",
    "test_grouped",
    "test_neighbors",
    "test_packaging",
}
SYSTEM_MODULES = {"test_browser", "test_crash_safety", "test_ray"}
ACCEPTANCE_MODULES = {"test_demo"}


def tier_of(module_name):
    if module_name in UNIT_MODULES:
        return "unit"
    if module_name in SYSTEM_MODULES:
        return "system"
    if module_name in ACCEPTANCE_MODULES:
        return "acceptance"
    return "integration"


def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(getattr(pytest.mark, tier_of(item.module.__name__.rsplit(".", 1)[-1])))


def pytest_sessionfinish(session, exitstatus):
    try:
        fod = sys.modules.get("fiftyone.core.odm.database")
        if fod is not None and fod._client is not None:  # unit-only: never connected
            fod.drop_database()
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)


def skip_unless_ci(reason):
    """Skips the calling test module, except in CI (TRANSFERSCOPE_CI=1), where
    what it needs must be there, so the module fails instead of skipping."""
    if os.environ.get("TRANSFERSCOPE_CI") == "1":
        raise RuntimeError(f"CI must run this test module, but: {reason}")
    pytest.skip(reason, allow_module_level=True)


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
