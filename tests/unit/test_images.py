"""Reading a user's image files (compute.images): EXIF orientation, 16-bit and
float images, the crop policy, the channels of a mixed set, and the decoded
image cache (only added files decoded, a size limit, clearing it)."""

import os

import numpy as np
import pytest
from PIL import Image
from transferscope.compute import images


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(images.IMAGE_CACHE_ENV, str(folder))
    return folder


def _save(path, array, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def test_a_16_bit_png_is_scaled_not_clipped_to_white(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    path = _save(tmp_path / "deep.png", ramp)
    assert Image.open(path).mode == "I;16"
    got = images.load_image(path, 32, 1)[..., 0].astype(int)
    expected = np.rint(ramp / 257.0).astype(int)
    assert np.abs(got - expected).max() <= 1
    assert got.min() == 0 and got.max() == 255 and len(np.unique(got)) > 200


@pytest.mark.parametrize("top", [1.0, 255.0])
def test_a_float_tiff_is_read_in_the_range_its_values_fit(tmp_path, top):
    ramp = np.linspace(0, top, 32 * 32).reshape(32, 32).astype(np.float32)
    path = _save(tmp_path / "float.tif", ramp)
    got = images.load_image(path, 32, 1)[..., 0].astype(int)
    assert np.abs(got - np.rint(ramp / top * 255)).max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    # a tall image stored on its side, as a phone writes it: orientation 6 = rotate 90 clockwise
    stored = np.zeros((20, 40), np.uint8)
    stored[:, :10] = 255  # the stored image's left band
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "phone.jpg", stored, exif=exif.tobytes(), quality=95)
    shown = images.load_image(path, 20, 1, resize="squash")[..., 0]
    # turned 90 degrees clockwise, the stored left band is the top band
    assert shown[:4].mean() > 200 and shown[-4:].mean() < 50
    plain = _save(tmp_path / "plain.jpg", stored, quality=95)
    assert images.load_image(plain, 20, 1, resize="squash")[..., 0][:, :4].mean() > 200


def test_crop_keeps_the_centre_and_squash_the_whole_image(tmp_path):
    wide = np.zeros((20, 60), np.uint8)
    wide[:, :20] = 255  # left third white, the centre and right black
    path = _save(tmp_path / "wide.png", wide)
    cropped = images.load_image(path, 20, 1)[..., 0]
    squashed = images.load_image(path, 20, 1, resize="squash")[..., 0]
    assert cropped.max() < 30  # the centre square holds no white
    assert squashed[:, :5].mean() > 200 and squashed[:, -5:].mean() < 30
    square = _save(tmp_path / "square.png", np.arange(400, dtype=np.uint8).reshape(20, 20))
    np.testing.assert_array_equal(
        images.load_image(square, 10, 1), images.load_image(square, 10, 1, resize="squash")
    )
    with pytest.raises(ValueError, match="resize must be one of"):
        images.decode_images([square], ["a"], 10, 1, resize="stretch")


def test_grayscale_is_replicated_in_rgb_and_colour_read_as_luminance(tmp_path):
    gray = _save(tmp_path / "g.png", np.full((8, 8), 90, np.uint8))
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    red = _save(tmp_path / "r.png", rgb)
    assert (images.load_image(gray, 8, 3) == 90).all()
    assert images.load_image(red, 8, 1).shape == (8, 8, 1)
    assert 70 <= images.load_image(red, 8, 1).mean() <= 80  # ITU-R 601 luma of pure red
    assert images.count_grayscale([gray] * 17 + [red, str(tmp_path / "missing.png")]) == (17, 1, 1)


def _files(tmp_path, n, start=0):
    rng = np.random.default_rng(start)
    return [
        _save(tmp_path / f"im{i}.png", rng.integers(0, 255, (12, 12), dtype=np.uint8))
        for i in range(start, start + n)
    ]


def _count_decodes(monkeypatch):
    calls = []
    real = images.load_image

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(images, "load_image", counting)
    return calls


def test_adding_files_decodes_only_the_new_ones(tmp_path, cache, monkeypatch):
    first = _files(tmp_path, 6)
    calls = _count_decodes(monkeypatch)
    before = images.decode_images(first, first, 8, 1)
    assert len(calls) == 6
    more = first + _files(tmp_path, 3, start=6)
    calls.clear()
    after = images.decode_images(more, more, 8, 1)
    assert sorted(calls) == sorted(more[6:])
    np.testing.assert_array_equal(after[:6], before)
    calls.clear()
    shuffled = more[::-1]
    np.testing.assert_array_equal(images.decode_images(shuffled, shuffled, 8, 1), after[::-1])
    assert calls == []  # reordered: every row copied from the cache
    with images._connect(str(cache), images.INDEX_DB) as db:
        assert db.execute("SELECT COUNT(*) FROM sets").fetchone()[0] == 3
    calls.clear()
    images.decode_images(more, more, 8, 3)  # another decoding: decoded again
    assert len(calls) == 9


def test_past_its_size_limit_the_cache_drops_the_least_recently_used_sets(
    tmp_path, cache, monkeypatch
):
    a, b, c = _files(tmp_path, 4), _files(tmp_path, 4, start=4), _files(tmp_path, 4, start=8)
    images.decode_images(a, a, 16, 1)
    images.decode_images(b, b, 16, 1)
    images.decode_images(a, a, 16, 1)  # a used last
    one_set = os.path.getsize(next(str(p) for p in cache.glob("*.npy") if ".rows" not in p.name))
    monkeypatch.setenv(images.CACHE_LIMIT_ENV, str(2.5 * one_set / 1e9))
    images.decode_images(c, c, 16, 1)
    info = images.cache_info()
    assert info["sets"] == 2 and info["bytes"] <= info["limit_bytes"] + 3 * 200
    calls = _count_decodes(monkeypatch)
    images.decode_images(a, a, 16, 1)
    assert calls == []  # a was kept
    images.decode_images(b, b, 16, 1)
    assert len(calls) == 4  # b was dropped
    monkeypatch.setenv(images.CACHE_LIMIT_ENV, "-1")
    with pytest.raises(ValueError, match="TRANSFERSCOPE_IMAGE_CACHE_GB must be above 0"):
        images.cache_limit_bytes()


def test_clearing_the_cache_removes_only_what_it_wrote(tmp_path, cache):
    files = _files(tmp_path, 3)
    images.decode_images(files, files, 8, 1)
    mine = cache / "notes.npy"
    mine.write_bytes(b"a user's file")
    freed = images.clear_cache()
    assert freed > 0 and sorted(os.listdir(cache)) == ["notes.npy"]
    assert images.cache_info()["sets"] == 0


def test_unreadable_files_are_named_and_leave_no_cache_file(tmp_path, cache):
    files = _files(tmp_path, 3)
    with open(files[1], "wb") as f:
        f.write(b"broken")
    with pytest.raises(images.UnreadableImagesError, match=r"1 image\(s\) could not be read: "):
        images.decode_images(files, ["a", "b", "c"], 8, 1)
    assert images.cache_info()["sets"] == 0
    assert not [f for f in os.listdir(cache) if f.endswith(".tmp")]


def test_fifos_devices_and_huge_files_are_refused_without_being_opened(cache, tmp_path):
    import time

    from transferscope.compute import digests

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it would block until a writer came
    start = time.monotonic()
    for path in (str(fifo), "/dev/zero", str(tmp_path)):
        with pytest.raises(digests.NotAnImageFileError, match="not a regular file"):
            images.load_image(path, 8, 1)
        with pytest.raises(digests.NotAnImageFileError, match="not a regular file"):
            digests.file_digest(path)
    with pytest.raises(
        images.UnreadableImagesError, match=r"pipe \(.*pipe.png: NotAnImageFileError"
    ):
        images.decode_images([str(fifo)], ["pipe"], 8, 1)
    big = tmp_path / "big.png"
    _save(big, np.zeros((4, 4), np.uint8))
    with pytest.raises(digests.NotAnImageFileError, match="more than the 10 an input file"):
        digests.check_regular_file(str(big), max_bytes=10)
    assert time.monotonic() - start < 10


def test_the_cache_sweeps_its_own_half_written_files_of_dead_processes(cache, tmp_path):
    import subprocess
    import sys

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    pid = int(dead.stdout)
    folder = images.image_cache_dir()
    os.makedirs(folder, exist_ok=True)
    leftover = os.path.join(folder, f"{'a' * 32}.npy.{pid}.tmp")
    mine = os.path.join(folder, f"{'b' * 32}.npy.{os.getpid()}.tmp")  # a live writer's
    users = os.path.join(folder, "notes.txt")
    for path in (leftover, mine, users):
        open(path, "w").close()
    paths = []
    for i in range(2):
        path = tmp_path / f"img{i}.png"
        _save(path, np.full((4, 4), i, np.uint8))
        paths.append(str(path))
    images.decode_images(paths, ["a", "b"], 4, 1)  # a new set: the sweep runs
    assert not os.path.exists(leftover)
    assert os.path.exists(mine) and os.path.exists(users)
