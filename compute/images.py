"""Reading image files into the uint8 arrays the models train on (PIL, no FiftyOne).

What a user's files may hold, and how each is read:

- EXIF orientation (photos from phones and cameras) is applied first.
- 16-bit images (PNG, TIFF) are scaled from 0..65535 to 0..255; float images
  are taken as 0..1 (torchvision's convention) when none of their values
  exceeds 1, else as 0..255, else as 0..65535; values outside are clipped.
  Without this, Pillow clips a 16-bit image to white and a 0..1 float image
  to black.
- Grayscale images are replicated to three channels when a set is read in
  RGB; colour images are converted to luminance when it is read in grayscale.
- ``resize="crop"`` (the default, as torchvision's ``Resize(S)`` then
  ``CenterCrop(S)``): the shorter side to ``S``, then the centre ``S x S``;
  ``"squash"``: the whole image to ``S x S``, its aspect ratio lost. The two
  agree on square images.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import re
import sqlite3
import time

import numpy as np
from PIL import Image, ImageOps

from .checks import check_choice
from .config import RESIZE_POLICIES
from .digests import NotAnImageFileError, check_regular_file, digest
from .disk import open_memmap_reserved

logger = logging.getLogger(__name__)

# Pillow modes with one band of intensity (an alpha band aside)
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# bump when the same file and options would decode to other pixels (a decoded
# image cache keyed by it is then read again)
DECODE_VERSION = 2  # 2: EXIF orientation, 16-bit and float scaling, centre crop


def is_grayscale(path) -> bool:
    """Whether the file holds one band of intensity (read from its header only)."""
    with Image.open(path) as im:
        return im.mode in GRAYSCALE_MODES


def count_grayscale(paths, num_workers=None):
    """``(grayscale, colour, unreadable)``: how many of the files are each,
    from their headers (no pixels decoded)."""

    def kind(path):
        try:
            return 0 if is_grayscale(path) else 1
        except Exception:  # noqa: BLE001 - PIL raises many kinds; decoding names the file
            return 2

    counts = [0, 0, 0]
    workers = num_workers or min(16, (os.cpu_count() or 1) * 4)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for k in pool.map(kind, paths, chunksize=256):
            counts[k] += 1
    return tuple(counts)


def _to_eight_bit(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images scaled into an 8-bit ``L`` image."""
    if im.mode not in SIXTEEN_BIT_MODES and im.mode not in ("I", "F"):
        return im
    values = np.asarray(im, dtype=np.float64)
    if im.mode in SIXTEEN_BIT_MODES:
        top = 65535.0
    else:  # "I" and "F": the range their values fit (0..1, 0..255 or 0..65535)
        peak = float(np.nanmax(values)) if values.size else 0.0
        top = 1.0 if (im.mode == "F" and peak <= 1.0) else 255.0 if peak <= 255 else 65535.0
    scaled = np.nan_to_num(values / top * 255.0, nan=0.0)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")


def fit(im: Image.Image, size: int, resize: str = "crop") -> Image.Image:
    """The image at ``size x size``: its shorter side resized to ``size`` and the
    centre cut out (``"crop"``), or resized whole (``"squash"``)."""
    w, h = im.size
    if resize == "squash" or w == h:
        return im.resize((size, size), Image.BILINEAR)
    scale = size / min(w, h)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return im.crop((left, top, left + size, top + size))


def load_image(path, size: int, channels: int, resize: str = "crop") -> np.ndarray:
    """One file as uint8 ``(size, size, channels)`` (see the module's docstring)."""
    check_regular_file(path)  # a FIFO or a device would block or never end
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im = _to_eight_bit(im)
        im = im.convert("L" if channels == 1 else "RGB")
        arr = np.asarray(fit(im, size, resize), dtype=np.uint8)
    return arr.reshape(size, size, channels)


# -- the decoded-image cache ---------------------------------------------------
#
# One memory-mapped ``<name>.npy`` per decoded set of files, named by the
# decoding and by every file's content (a hash of its bytes), beside
# ``<name>.rows.npy``, the content hash of each row. A set that is not cached
# yet copies the rows of files another cached set of the same decoding holds
# and decodes only the rest, so adding samples decodes only the new ones.
# Decoding writes straight into the memory-mapped file in chunks: peak memory
# does not grow with the number of images. ``index.sqlite`` keeps each set's
# decoding, size and last use; past the size limit the least recently used
# sets are removed.

IMAGE_CACHE_ENV = "TRANSFERSCOPE_IMAGE_CACHE"  # a folder, or "off"
CACHE_LIMIT_ENV = "TRANSFERSCOPE_IMAGE_CACHE_GB"  # the size limit, in GB
DEFAULT_CACHE_LIMIT_GB = 50.0
DIGESTS_DB = "digests.sqlite"
INDEX_DB = "index.sqlite"
# the only files the cache writes (and so the only ones it removes)
CACHE_FILE_RE = re.compile(r"^[0-9a-f]{32}(\.rows)?\.npy$")
# a set being written: <name>.npy.<pid>.tmp (renamed when complete)
CACHE_TMP_RE = re.compile(r"^[0-9a-f]{32}(\.rows)?\.npy\.(\d+)\.tmp$")
# images decoded per chunk: the bound on the decoded pixels held in memory at once
DECODE_CHUNK = 2048


class UnreadableImagesError(ValueError):
    """Some files could not be decoded; ``bad`` lists ``(name, path, error)``."""

    def __init__(self, bad):
        self.bad = sorted(bad)
        shown = "; ".join(f"{n} ({p}: {err})" for n, p, err in self.bad[:5])
        more = " ..." if len(self.bad) > 5 else ""
        super().__init__(f"{len(self.bad)} image(s) could not be read: {shown}{more}")


def image_cache_dir():
    """Where decoded images are kept (``$TRANSFERSCOPE_IMAGE_CACHE``, default
    ``~/transferscope/cache/images``), or ``None`` when it is ``"off"``."""
    folder = os.environ.get(IMAGE_CACHE_ENV, "")
    if folder.lower() == "off":
        return None
    return folder or os.path.join(os.path.expanduser("~"), "transferscope", "cache", "images")


def cache_limit_bytes():
    """The cache's size limit (``$TRANSFERSCOPE_IMAGE_CACHE_GB``, default 50)."""
    raw = os.environ.get(CACHE_LIMIT_ENV, "")
    try:
        gb = float(raw) if raw else DEFAULT_CACHE_LIMIT_GB
    except ValueError:
        raise ValueError(f"{CACHE_LIMIT_ENV} must be a number of GB; got {raw!r}") from None
    if not gb > 0:
        raise ValueError(f"{CACHE_LIMIT_ENV} must be above 0; got {raw!r}")
    return int(gb * 1e9)


def _connect(folder, name):
    os.makedirs(folder, exist_ok=True)
    return sqlite3.connect(os.path.join(folder, name), timeout=60)


def file_digests(paths, folder):
    """xxHash-128 of each file's bytes (hex, as an ``S32`` array), or ``None``
    if one cannot be read.

    Hashes are kept in ``<folder>/digests.sqlite``, keyed by path, inode,
    size, modification and change time: a file is read again only when one
    of them changed (its change time moves even when a copy restores the
    modification time), so a later run hashes nothing it has seen. Files
    are looked up and recorded a chunk at a time: beyond the 32 bytes a file
    of the result, memory does not grow with the number of files.
    """
    import xxhash

    out = np.empty(len(paths), dtype="S32")
    db = _connect(folder, DIGESTS_DB)
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, ino INTEGER, "
            "size INTEGER, mtime INTEGER, ctime INTEGER, digest TEXT)"
        )
        for start in range(0, len(paths), 900):  # SQLite's limit on bound parameters
            chunk = list(paths[start : start + 900])
            rows = db.execute(
                f"SELECT path, ino, size, mtime, ctime, digest FROM digests "
                f"WHERE path IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            known = {r[0]: r[1:] for r in rows}
            fresh = []
            for i, p in enumerate(chunk, start):
                try:
                    st = check_regular_file(p)
                except (OSError, NotAnImageFileError):
                    return None  # not cached: decoding names the file
                key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                row = known.get(p)
                if row is not None and tuple(row[:4]) == key:
                    out[i] = row[4]
                    continue
                try:
                    hasher = xxhash.xxh3_128()
                    with open(p, "rb") as f:
                        while chunk := f.read(1 << 20):
                            hasher.update(chunk)
                    file_digest = hasher.hexdigest()
                except OSError:
                    return None
                out[i] = file_digest
                fresh.append((p, *key, file_digest))
            if fresh:
                db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)", fresh)
        db.commit()
        return out
    finally:
        db.close()


def decode_rows(out, paths, names, size, channels, resize="crop", rows=None, num_workers=None):
    """Decodes ``paths[i]`` into ``out[rows[i]]`` (every row when ``rows`` is
    None), a chunk at a time; raises :class:`UnreadableImagesError` naming
    every file that could not be read."""
    rows = range(len(paths)) if rows is None else rows
    workers = num_workers or min(8, (os.cpu_count() or 1) * 2)
    bad = []

    def load(i):
        try:
            return i, load_image(paths[i], size, channels, resize), None
        except Exception as e:  # noqa: BLE001 - PIL raises many kinds for bad files
            return i, None, type(e).__name__

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), DECODE_CHUNK):
            for i, arr, err in pool.map(load, range(start, min(start + DECODE_CHUNK, len(paths)))):
                if err is None:
                    out[rows[i]] = arr
                else:
                    bad.append((names[i], paths[i], err))
    if bad:
        raise UnreadableImagesError(bad)


def decode_images(paths, names, size, channels, resize="crop", num_workers=None):
    """Every file as uint8 ``(N, size, size, channels)``, decoded once.

    With the cache on (see :func:`image_cache_dir`) the result is a read-only
    memory map of the cache file, decoded in chunks straight into it and
    reused by every later call on the same files; files of another cached
    set are copied, not decoded again. ``names`` label files in errors.
    """
    check_choice(resize, "resize", RESIZE_POLICIES)
    shape = (len(paths), size, size, channels)
    folder = image_cache_dir()
    digests = None
    if folder is not None and len(paths):
        try:
            digests = file_digests(paths, folder)
        except (OSError, sqlite3.Error) as e:  # read-only or full: slower, same result
            logger.warning(
                "the decoded image cache in %s cannot be used (%s); decoding in memory", folder, e
            )
    if digests is None:  # no cache, or a missing file (decoding names it)
        return _decode_in_memory(paths, names, size, channels, resize, num_workers)
    decoding = f"{size}/{channels}/{resize}/v{DECODE_VERSION}"
    # the S32 array's bytes are its hex strings one after another
    name = digest(decoding, str(len(paths)), digests, length=32)
    path = os.path.join(folder, f"{name}.npy")
    cached = _open_cached(path, shape)
    if cached is not None:
        _register(folder, name, decoding, len(paths), os.path.getsize(path))  # its last use
        return cached
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        out = open_memmap_reserved(tmp, np.uint8, shape)
    except OSError as e:  # a read-only or full disk costs speed, not results
        logger.warning("could not cache decoded images in %s: %s", folder, e)
        return _decode_in_memory(paths, names, size, channels, resize, num_workers)
    try:
        missing = _copy_cached_rows(folder, decoding, digests, out)
        todo = np.flatnonzero(missing)
        decode_rows(
            out,
            [paths[i] for i in todo],
            [names[i] for i in todo],
            size,
            channels,
            resize,
            rows=todo,
            num_workers=num_workers,
        )
        out.flush()
        del out
        _save_rows(f"{path[:-4]}.rows.npy", digests)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _register(folder, name, decoding, len(paths), os.path.getsize(path))
    logger.info("decoded %d of %d images (the rest from the cache)", len(todo), len(paths))
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _decode_in_memory(paths, names, size, channels, resize, num_workers):
    out = np.empty((len(paths), size, size, channels), dtype=np.uint8)
    decode_rows(out, paths, names, size, channels, resize, num_workers=num_workers)
    return out


def _open_cached(path, shape):
    if not os.path.exists(path):
        return None
    try:
        cached = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None  # a damaged cache file is decoded again and replaced
    return cached if cached.shape == shape and cached.dtype == np.uint8 else None


def _save_rows(path, digests):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, digests, allow_pickle=False)
    os.replace(tmp, path)


def _index(folder):
    db = _connect(folder, INDEX_DB)
    db.execute(
        "CREATE TABLE IF NOT EXISTS sets (name TEXT PRIMARY KEY, decoding TEXT, "
        "num INTEGER, bytes INTEGER, last_used REAL)"
    )
    return db


def _copy_cached_rows(folder, decoding, want, out):
    """Copies into ``out`` the rows whose content hash a cached set of the same
    decoding holds; returns the mask of rows still to decode."""
    missing = np.ones(len(want), dtype=bool)
    db = _index(folder)
    try:
        names = [
            r[0]
            for r in db.execute(
                "SELECT name FROM sets WHERE decoding = ? ORDER BY last_used DESC", (decoding,)
            )
        ]
    finally:
        db.close()
    for name in names:
        try:
            have = np.load(os.path.join(folder, f"{name}.rows.npy"), allow_pickle=False)
            source = np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")
        except (OSError, ValueError):
            continue  # removed or damaged meanwhile: those rows are decoded
        if len(have) != len(source) or source.shape[1:] != out.shape[1:]:
            continue
        order = np.argsort(have, kind="stable")
        ordered = have[order]
        wanted = np.flatnonzero(missing)
        pos = np.minimum(np.searchsorted(ordered, want[wanted]), len(have) - 1)
        hit = ordered[pos] == want[wanted]
        dst, src = wanted[hit], order[pos[hit]]
        for start in range(0, len(dst), DECODE_CHUNK):
            out[dst[start : start + DECODE_CHUNK]] = source[src[start : start + DECODE_CHUNK]]
        missing[dst] = False
        if not missing.any():
            break
    return missing


def _register(folder, name, decoding, num, size):
    """Records a new cached set, then removes the least recently used others
    while the cache is over its size limit, and the half-written sets of
    processes that are gone."""
    for leftover in _dead_writers_files(folder):
        try:
            os.remove(os.path.join(folder, leftover))
        except FileNotFoundError:
            pass
    limit = cache_limit_bytes()
    db = _index(folder)
    try:
        db.execute(
            "INSERT OR REPLACE INTO sets VALUES (?, ?, ?, ?, ?)",
            (name, decoding, num, size, time.time()),
        )
        db.commit()
        rows = list(db.execute("SELECT name, bytes FROM sets ORDER BY last_used ASC"))
        total = sum(b for _, b in rows)
        for other, b in rows:
            if total <= limit:
                break
            if other == name:
                continue
            _remove_set(folder, other)
            db.execute("DELETE FROM sets WHERE name = ?", (other,))
            total -= b
        db.commit()
    finally:
        db.close()
    if total > limit:
        logger.warning(
            "the decoded image cache in %s holds %.1f GB, above its limit of %.1f GB (%s): "
            "this one set is larger",
            folder,
            total / 1e9,
            limit / 1e9,
            CACHE_LIMIT_ENV,
        )


def _remove_set(folder, name):
    for suffix in (".npy", ".rows.npy"):
        try:
            os.remove(os.path.join(folder, name + suffix))
        except FileNotFoundError:
            pass


def cache_info(folder=None):
    """``{"folder", "sets", "bytes", "limit_bytes"}`` of the decoded image cache."""
    folder = folder or image_cache_dir()
    files = _cache_files(folder)
    return {
        "folder": folder,
        "sets": sum(1 for f in files if not f.endswith(".rows.npy")),
        "bytes": sum(os.path.getsize(os.path.join(folder, f)) for f in files),
        "limit_bytes": cache_limit_bytes(),
    }


def clear_cache(folder=None):
    """Removes every file the decoded image cache wrote (and nothing else);
    returns how many bytes it freed."""
    folder = folder or image_cache_dir()
    freed = 0
    names = (
        _cache_files(folder)
        + _dead_writers_files(folder)
        + [f for f in (INDEX_DB, DIGESTS_DB) if os.path.exists(os.path.join(folder, f))]
    )
    for f in names:
        path = os.path.join(folder, f)
        freed += os.path.getsize(path)
        os.remove(path)
    return freed


def _dead_writers_files(folder):
    """The cache's own temporary files whose writing process no longer runs."""
    out = []
    for f in os.listdir(folder) if folder and os.path.isdir(folder) else []:
        match = CACHE_TMP_RE.match(f)
        if match and not _process_alive(int(match.group(2))):
            out.append(f)
    return sorted(out)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _cache_files(folder):
    if folder is None or not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if CACHE_FILE_RE.match(f))
