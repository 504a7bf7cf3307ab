"""Images are decoded once: the on-disk cache behind decode_images."""

import os

import numpy as np
import pytest
from PIL import Image
from transferscope.compute import images as image_files

from transferscope import views


@pytest.fixture()
def images(tmp_path, monkeypatch):
    monkeypatch.setenv(views.IMAGE_CACHE_ENV, str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = str(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths, [f"id{i}" for i in range(5)], tmp_path / "cache"


def _decoded(cache):
    return sorted(f for f in os.listdir(cache) if f.endswith(".npy") and ".rows" not in f)


def test_second_decode_is_read_from_the_cache(images, monkeypatch):
    paths, ids, cache = images
    first = views.decode_images(paths, ids, 8, 1)
    assert len(_decoded(cache)) == 1
    monkeypatch.setattr(image_files, "decode_rows", lambda *a, **k: pytest.fail("decoded again"))
    second = views.decode_images(paths, ids, 8, 1)
    assert isinstance(second, np.memmap)  # memory-mapped, not read into memory
    np.testing.assert_array_equal(first, second)


def test_a_changed_file_a_new_size_or_other_samples_decode_again(images):
    paths, ids, cache = images
    views.decode_images(paths, ids, 8, 1)
    views.decode_images(paths, ids, 12, 1)  # another size
    views.decode_images(paths[:3], ids[:3], 8, 1)  # other samples
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(1, 1))  # a rewritten file: another mtime
    fresh = views.decode_images(paths, ids, 8, 1)
    assert len(_decoded(cache)) == 4
    assert fresh[0].max() == 0


def test_a_file_replaced_with_its_size_and_mtime_restored_decodes_again(images, tmp_path):
    # as cp -p, rsync -t or tar x leave it: other pixels, same size and mtime
    paths, ids, cache = images
    first = np.array(views.decode_images(paths, ids, 8, 1))
    st = os.stat(paths[1])
    other = str(tmp_path / "other.png")
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(other)
    with open(other, "rb") as f:
        data = f.read()
    with open(paths[1], "r+b") as f:  # same path and inode
        f.write(data)
        f.truncate(len(data))
    os.truncate(paths[1], max(len(data), st.st_size))
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(paths[1]).st_mtime_ns == st.st_mtime_ns
    fresh = views.decode_images(paths, ids, 8, 1)
    assert fresh[1].max() == 7 and not np.array_equal(fresh[1], first[1])
    np.testing.assert_array_equal(fresh[0], first[0])


def test_damaged_cache_file_is_replaced_and_off_writes_nothing(images, monkeypatch):
    paths, ids, cache = images
    good = np.array(views.decode_images(paths, ids, 8, 1))
    (path,) = [cache / f for f in _decoded(cache)]
    path.write_bytes(b"not an npy file")
    np.testing.assert_array_equal(views.decode_images(paths, ids, 8, 1), good)
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), good)
    monkeypatch.setenv(views.IMAGE_CACHE_ENV, "off")
    os.remove(path)
    views.decode_images(paths, ids, 8, 1)
    assert _decoded(cache) == []


def test_unreadable_images_are_still_named(images):
    paths, ids, _ = images
    with open(paths[2], "wb") as f:
        f.write(b"broken")
    with pytest.raises(views.TransferScopeError, match=r"1 image\(s\) could not be read: id2"):
        views.decode_images(paths, ids, 8, 1)


def test_channels_come_from_every_file_and_a_mixed_set_is_noted(tmp_path):
    gray = [str(tmp_path / f"g{i}.png") for i in range(20)]
    for p in gray:
        Image.fromarray(np.full((6, 6), 40, np.uint8)).save(p)
    colour = str(tmp_path / "c.png")
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(colour)
    assert views.detect_channels(gray) == (1, None)
    channels, note = views.detect_channels(gray + [colour])  # the colour file comes last
    assert channels == 3 and "20 grayscale and 1 colour" in note
    assert views.detect_channels([colour]) == (3, None)
