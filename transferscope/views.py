"""Between FiftyOne collections and arrays: validation, splits, image decoding."""

import concurrent.futures
import functools
import keyword
import logging
import os
import re
import warnings
from collections.abc import Callable

import numpy as np
from PIL import Image

import fiftyone as fo
import fiftyone.core.collections as foc
import fiftyone.core.labels as fol

from .compute import checks
from .compute.digests import digest

logger = logging.getLogger(__name__)

# what the SDK takes for a dataset: a dataset, a view of one, or a dataset's name
DatasetLike = foc.SampleCollection | str
# a split: a tag, a field value or a saved view's name (as ``split_by`` says), or a view
SplitLike = str | foc.SampleCollection
# None/True: a progress bar (as FiftyOne's config says); False: none; or a callback
# progress(num_done, num_total)
Progress = bool | Callable[[int, int], None] | None

SPLIT_KINDS = ("tags", "field", "saved_view")
_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# fields are named <key>_<suffix> and stores <key>/: keep both well inside limits
MAX_KEY_LENGTH = 64


class TransferScopeError(ValueError):
    """Bad input to a transferscope call; nothing was changed."""


def renamed_keywords(**new_name_of):
    """Accepts the keywords' old names for a deprecation period, with a warning.

    ``@renamed_keywords(run_key="influence_key")``: a call with ``run_key=``
    warns (``DeprecationWarning``) and passes it as ``influence_key=``; a
    call that names both is refused.
    """

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            for old, new in new_name_of.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got {old}= and {new}=; pass only {new}=")
                warnings.warn(
                    f"{fn.__name__}({old}=...) is deprecated; use {new}=",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call

    return wrap


def load_dataset(dataset_or_name, role):
    if isinstance(dataset_or_name, str):
        if not fo.dataset_exists(dataset_or_name):
            raise TransferScopeError(f"{role}: no dataset named {dataset_or_name!r} exists")
        return fo.load_dataset(dataset_or_name)
    if isinstance(dataset_or_name, fo.core.collections.SampleCollection):
        return dataset_or_name
    raise TransferScopeError(
        f"{role} must be a FiftyOne dataset, view or dataset name; "
        f"got {type(dataset_or_name).__name__}"
    )


def validate_run_key(run_key):
    if (
        not isinstance(run_key, str)
        or not _KEY_RE.fullmatch(run_key)
        or keyword.iskeyword(run_key)
        or len(run_key) > MAX_KEY_LENGTH
    ):
        raise TransferScopeError(
            f"run_key must be a Python identifier starting with a letter "
            f"(letters, digits, underscores; at most {MAX_KEY_LENGTH} characters); "
            f"got {run_key!r}"
        )


def label_is(path, value):
    """``F(path) == value``, with ``value`` a literal: a label such as ``"$5"`` is
    never read as a field path."""
    return fo.ViewField(path) == fo.ViewExpression.literal(value)


def label_in(path, values):
    """``F(path).is_in(values)``, with every value a literal (see :func:`label_is`)."""
    return fo.ViewField(path).is_in([fo.ViewExpression.literal(v) for v in values])


def ids_with_labels(collection, path, values):
    """The ids of the samples whose ``path`` is one of ``values`` (compared in Python)."""
    wanted = set(values)
    ids, labels = collection.values(["id", path])
    return [i for i, label in zip(ids, labels) if label in wanted]


def step_reporter(progress, num_steps):
    """``report(step)`` for a job of ``num_steps`` steps: calls ``progress(step,
    num_steps)`` when ``progress`` is a callable, else does nothing."""
    if callable(progress):
        return lambda step: progress(step, num_steps)
    return lambda step: None


def check_count(value, name, minimum=1, maximum=None, note=""):
    """:func:`transferscope.compute.checks.check_int`, refusing with a TransferScopeError."""
    try:
        return checks.check_int(value, name, minimum, maximum, note)
    except ValueError as e:
        raise TransferScopeError(str(e)) from None


def check_number(value, name, low=None, high=None, low_open=False, high_open=False):
    """:func:`transferscope.compute.checks.check_number`, refusing with a TransferScopeError."""
    try:
        return checks.check_number(value, name, low, high, low_open, high_open)
    except ValueError as e:
        raise TransferScopeError(str(e)) from None


def validate_tag(tag):
    if not isinstance(tag, str) or not tag.strip() or tag != tag.strip():
        raise TransferScopeError(
            f"tag must be a non-empty string without surrounding spaces; got {tag!r}"
        )


def check_run_key_free(collection, run_key, overwrite, fields):
    """Refuses an existing run key (unless overwrite) or fields a run does not own."""
    dataset = collection._root_dataset
    if run_key in dataset.list_runs():
        if not overwrite:
            raise TransferScopeError(
                f"dataset {dataset.name!r} already has a run with key {run_key!r}; "
                f"pass overwrite=True or choose another run_key"
            )
        owned = set(dataset.get_run_info(run_key).config.__dict__.get("fields", []))
    else:
        owned = set()
    taken = [f for f in fields if dataset.has_sample_field(f) and f not in owned]
    if taken:
        raise TransferScopeError(
            f"dataset {dataset.name!r} already has field(s) {taken} that no "
            f"transferscope run with key {run_key!r} owns; choose another run_key"
        )


def check_classification_field(collection, field, role):
    schema = collection.get_field_schema(embedded_doc_type=fol.Classification)
    if field not in schema:
        all_fields = collection.get_field_schema()
        if field not in all_fields:
            raise TransferScopeError(
                f"{role} label field {field!r} does not exist on {collection._root_dataset.name!r}"
            )
        raise TransferScopeError(
            f"{role} label field {field!r} is not a Classification field "
            f"(found {all_fields[field]})"
        )


def classification_fields(collection):
    return sorted(collection.get_field_schema(embedded_doc_type=fol.Classification))


def resolve_split(collection, split, split_by="tags", split_field="split"):
    """The view of ``collection`` that forms one split.

    ``split_by``: ``"tags"`` (samples tagged ``split``), ``"field"`` (samples
    whose ``split_field`` equals ``split``) or ``"saved_view"`` (the saved view
    named ``split``). A view may also be passed directly as ``split``.
    """
    if isinstance(split, fo.core.collections.SampleCollection):
        view = split
    elif split_by == "tags":
        view = collection.match_tags(split)
    elif split_by == "field":
        if not collection.has_field(split_field):
            raise TransferScopeError(f"split field {split_field!r} does not exist")
        view = collection.match(label_is(split_field, split))
    elif split_by == "saved_view":
        dataset = collection._root_dataset
        if split not in dataset.list_saved_views():
            raise TransferScopeError(f"dataset {dataset.name!r} has no saved view named {split!r}")
        view = dataset.load_saved_view(split)
    else:
        raise TransferScopeError(f"split_by must be one of {SPLIT_KINDS}; got {split_by!r}")
    if len(view) == 0:
        raise TransferScopeError(
            f"split {split!r} (by {split_by}) of {collection._root_dataset.name!r} is empty"
        )
    return view


def labels_of(view, field, role):
    """Sample ids, filepaths and label strings; refuses missing labels."""
    ids, paths, labels = view.values(["id", "filepath", f"{field}.label"])
    missing = [i for i, l in zip(ids, labels) if l is None]
    if missing:
        raise TransferScopeError(
            f"{len(missing)} {role} sample(s) have no {field!r} label, e.g. {missing[:3]}"
        )
    return np.asarray(ids), list(paths), list(labels)


IMAGE_CACHE_ENV = "TRANSFERSCOPE_IMAGE_CACHE"  # a folder, or "off"


def image_cache_dir():
    """Where decoded images are kept (``$TRANSFERSCOPE_IMAGE_CACHE``, default
    ``~/transferscope/cache/images``), or ``None`` when it is ``"off"``."""
    folder = os.environ.get(IMAGE_CACHE_ENV, "")
    if folder.lower() == "off":
        return None
    return folder or os.path.join(os.path.expanduser("~"), "transferscope", "cache", "images")


def _cache_path(paths, ids, image_size, channels):
    """The cache file for these images, keyed by the decoding and by each file's
    content (a hash of its bytes: a file replaced by other pixels is decoded
    again, even with its size and modification time restored); ``None`` if a
    file is missing."""
    folder = image_cache_dir()
    if folder is None:
        return None
    digests = file_digests(paths, folder)
    if digests is None:
        return None  # decoding names the unreadable files
    name = digest(f"{image_size}/{channels}/{len(paths)}", *digests, length=32)
    return os.path.join(folder, f"{name}.npy")


def file_digests(paths, folder):
    """xxHash-128 of each file's bytes, or ``None`` if one cannot be read.

    Hashes are kept in ``<folder>/digests.sqlite``, keyed by path, inode,
    size, modification and change time: a file is read again only when one
    of them changed (its change time moves even when a copy restores the
    modification time), so a later run hashes nothing it has seen.
    """
    import sqlite3

    import xxhash

    os.makedirs(folder, exist_ok=True)
    db = sqlite3.connect(os.path.join(folder, "digests.sqlite"), timeout=60)
    try:
        db.execute(
            "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, ino INTEGER, "
            "size INTEGER, mtime INTEGER, ctime INTEGER, digest TEXT)"
        )
        known = {}
        for start in range(0, len(paths), 900):  # SQLite's limit on bound parameters
            chunk = list(paths[start : start + 900])
            rows = db.execute(
                f"SELECT path, ino, size, mtime, ctime, digest FROM digests "
                f"WHERE path IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            known.update({r[0]: r[1:] for r in rows})
        out, fresh = [], []
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                return None
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            row = known.get(p)
            if row is not None and tuple(row[:4]) == key:
                out.append(row[4])
                continue
            try:
                with open(p, "rb") as f:
                    digest = xxhash.xxh3_128_hexdigest(f.read())
            except OSError:
                return None
            out.append(digest)
            fresh.append((p, *key, digest))
        if fresh:
            db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)", fresh)
            db.commit()
        return out
    finally:
        db.close()


def decode_images(paths, ids, image_size, channels, num_workers=None):
    """Decodes and resizes images to uint8 ``(N, S, S, channels)``, once.

    The result is cached on disk (see :func:`image_cache_dir`) as a ``.npy``
    file keyed by the files' contents and the decoding, and memory-mapped on
    later calls: every job on the same
    samples (influence, curation, planner, leakage) decodes them once.
    Raises naming the samples whose images cannot be read.
    """
    cache = _cache_path(paths, ids, image_size, channels)
    shape = (len(paths), image_size, image_size, channels)
    if cache is not None and os.path.exists(cache):
        try:
            cached = np.load(cache, mmap_mode="r", allow_pickle=False)
            if cached.shape == shape and cached.dtype == np.uint8:
                return cached
        except (OSError, ValueError):
            pass  # a damaged cache file is decoded again and replaced
    out = _decode(paths, ids, image_size, channels, num_workers)
    if cache is not None:
        try:
            os.makedirs(os.path.dirname(cache), exist_ok=True)
            tmp = f"{cache}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                np.save(f, out, allow_pickle=False)
            os.replace(tmp, cache)
        except OSError as e:  # a read-only or full disk costs speed, not results
            logger.warning("could not cache decoded images at %s: %s", cache, e)
    return out


def _decode(paths, ids, image_size, channels, num_workers=None):
    mode = "L" if channels == 1 else "RGB"

    def load(path):
        with Image.open(path) as im:
            im = im.convert(mode).resize((image_size, image_size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)

    out = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)
    bad = []
    workers = num_workers or min(8, (os.cpu_count() or 1) * 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(load, p): i for i, p in enumerate(paths)}
        for fut in concurrent.futures.as_completed(futures):
            i = futures[fut]
            try:
                arr = fut.result()
            except Exception as e:  # PIL raises many kinds for bad files
                bad.append((ids[i], paths[i], type(e).__name__))
                continue
            out[i] = arr.reshape(image_size, image_size, channels)
    if bad:
        bad.sort()
        shown = "; ".join(f"{i} ({p}: {err})" for i, p, err in bad[:5])
        raise TransferScopeError(
            f"{len(bad)} image(s) could not be read: {shown}" + (" ..." if len(bad) > 5 else "")
        )
    return out


def detect_channels(paths, probe=16):
    """1 when the first images are all single-band, else 3."""
    for p in paths[:probe]:
        try:
            with Image.open(p) as im:
                if im.mode not in ("L", "1", "I;16", "I", "F"):
                    return 3
        except Exception:
            continue  # decode_images names unreadable files later
    return 1
