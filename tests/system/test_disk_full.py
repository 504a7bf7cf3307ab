"""A full filesystem: a small tmpfs, the real store, the real database.

Memory-mapped stores used to be created sparse, so a full disk killed the
process with SIGBUS at the first write of a row (no message, the run's lock
held). Their blocks are reserved now: the error comes at creation, names the
folder and the bytes, and the same call again after space is freed completes
as an uninterrupted run would.
"""

import contextlib
import os
import subprocess

import numpy as np
import pytest
from helpers.tiny import TINY_KWARGS
from transferscope.compute.disk import DiskFullError
from transferscope.compute.store import ResultsStore

import transferscope as ts


@contextlib.contextmanager
def tmpfs(mount, options):
    """A tmpfs mounted at ``mount`` with ``options`` for the block (skips without root)."""
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (it needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture()
def small_disk(tmp_path):
    with tmpfs(tmp_path / "small", "size=4m") as mount:
        yield mount


def _fill(folder, leave):
    """A ballast file that leaves about ``leave`` bytes free in ``folder``."""
    ballast = folder / "ballast"
    stat = os.statvfs(folder)
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return ballast


def test_a_store_that_does_not_fit_names_its_folder_and_bytes(small_disk):
    ballast = _fill(small_disk, 64 * 1024)
    masks = np.ones((32, 6), dtype=bool)
    with pytest.raises(DiskFullError, match=r"not enough disk space in .*small/store: .* bytes"):
        ResultsStore.open(str(small_disk / "store"), "h", masks, num_targets=2000)
    ballast.unlink()
    store = ResultsStore.open(str(small_disk / "store"), "h", masks, num_targets=2000)
    assert len(store.pending()) == 32  # created whole once there is room


def test_a_run_on_a_full_disk_fails_with_a_message_and_completes_after_space_is_freed(
    tiny_datasets, small_disk, tmp_path
):
    pre, tgt = tiny_datasets
    ballast = _fill(small_disk, 16 * 1024)
    out = str(small_disk / "run")
    with pytest.raises(OSError, match="not enough disk space in"):
        ts.compute_class_influence(pre, tgt, "full", output_dir=out, progress=False, **TINY_KWARGS)
    tgt.reload()
    assert "full" not in tgt.list_runs() and not tgt.has_sample_field("full_helpful")
    ballast.unlink()
    again = ts.compute_class_influence(
        pre, tgt, "full", output_dir=out, progress=False, **TINY_KWARGS
    )
    elsewhere = ts.compute_class_influence(
        pre, tgt, "ref", output_dir=str(tmp_path / "ref"), progress=False, **TINY_KWARGS
    )
    np.testing.assert_array_equal(again.class_influence, elsewhere.class_influence)


def test_a_read_only_image_cache_costs_speed_not_results(tmp_path, monkeypatch, caplog):
    from PIL import Image
    from transferscope.compute import images

    with tmpfs(tmp_path / "ro", "size=1m,ro") as cache:
        paths = []
        for i in range(3):
            path = tmp_path / f"{i}.png"
            Image.fromarray(np.full((4, 4), 40 * i, np.uint8)).save(path)
            paths.append(str(path))
        monkeypatch.setenv(images.IMAGE_CACHE_ENV, str(cache))
        with caplog.at_level("WARNING"):
            out = images.decode_images(paths, ["a", "b", "c"], 4, 1)
        assert list(out[:, 0, 0, 0]) == [0, 40, 80]
        assert "cannot be used" in caplog.text and str(cache) in caplog.text
