"""Test set-up: the real FiftyOne database, isolated by a per-session name.

Everything is set before fiftyone is imported; the database is dropped at the
end of the session.
"""

import os
import shutil
import tempfile
import uuid

import numpy as np
import pytest

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


def pytest_sessionfinish(session, exitstatus):
    try:
        import fiftyone.core.odm.database as fod

        fod.drop_database()
    finally:
        shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def tmp_root():
    return _TMP


def _pattern(cls, rng, size=16):
    """A simple class-specific pattern: bars at class-dependent rows/angles."""
    img = np.zeros((size, size), np.float32)
    row = 2 + (cls * 3) % (size - 4)
    img[row:row + 2, 2:size - 2] = 1.0
    if cls % 2:
        img[2:size - 2, row:row + 2] = 1.0
    img += rng.normal(0, 0.15, img.shape)
    img = np.roll(img, rng.integers(-1, 2), axis=1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


@pytest.fixture()
def tiny_datasets(tmp_path):
    """A 6-class pretraining set and a 3-class target (train/test tags)."""
    import fiftyone as fo
    from PIL import Image

    rng = np.random.default_rng(0)
    name = uuid.uuid4().hex[:6]
    pre = fo.Dataset(f"pre-{name}")
    samples = []
    for c in range(6):
        for i in range(10):
            p = str(tmp_path / f"pre_{c}_{i}.png")
            Image.fromarray(_pattern(c, rng)).save(p)
            samples.append(fo.Sample(filepath=p, ground_truth=fo.Classification(label=f"class{c}")))
    pre.add_samples(samples, progress=False)
    tgt = fo.Dataset(f"tgt-{name}")
    samples = []
    for c in range(3):
        for i in range(10):
            split = "train" if i < 4 else "test"
            p = str(tmp_path / f"tgt_{c}_{i}.png")
            Image.fromarray(_pattern(c * 2, rng)).save(p)
            samples.append(fo.Sample(filepath=p, tags=[split],
                                     ground_truth=fo.Classification(label=f"t{c}")))
    tgt.add_samples(samples, progress=False)
    yield pre, tgt
    for ds in (pre, tgt):
        if not ds.deleted:
            ds.delete()


TINY_KWARGS = dict(num_models=4, epochs=1, width=4, batch_size=16, seed=0)
