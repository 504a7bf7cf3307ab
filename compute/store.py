"""A resumable results store for subset models (after MadryLab/datamodels).

A run directory holds::

    spec.json        config, config hash, shapes, class and sample names
    masks.npy        (M, C) bool, which classes each model saw
    <output>.npy     (M, T) memory-mapped per-model outputs (prob, margin, ...)
    checksums.npy    (M,) a hash of each completed row's outputs
    completed.npy    (M,) bool, set only after a model's row is flushed
    transferscope-files.json   the names of every file and folder written here

A model's row is written and flushed, then its checksum, then its
``completed`` flag, so a killed run loses at most the models in flight, and
a resumed run retrains only the models whose flag is unset. On opening,
every array's shape and size is checked against its header (a truncated
file is refused, never zero-extended) and every completed row against its
checksum (a damaged row is retrained, or refused when only reading).

Nothing here is pickled: JSON and ``.npy`` (``allow_pickle=False``) only.
Nothing is deleted that the manifest does not name: :func:`clear_dir`
removes only what transferscope wrote.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np

from .disk import named_when_full, open_memmap_reserved
from .train import OUTPUT_NAMES

logger = logging.getLogger(__name__)

_DTYPES = {"prob": np.float32, "margin": np.float32, "correct": np.float32, "pred": np.int32}
MANIFEST = "transferscope-files.json"


class StoreMismatchError(ValueError):
    """The run directory was written for another configuration or data."""


class StoreCorruptError(ValueError):
    """A store file is damaged (truncated, unreadable); the message names it."""


class ForeignFilesError(ValueError):
    """A directory holds files transferscope did not write; it is left alone."""


# --- the manifest: what transferscope wrote in a directory -----------------------


def read_manifest(folder):
    """The names transferscope wrote in ``folder`` (its manifest; [] when none)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return []
    try:
        with open(path) as f:
            names = json.load(f)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError("not a list of names")
        # only plain names of entries inside the folder: a path, "..", or an
        # absolute name would make clean-up reach files transferscope did not write
        bad = [n for n in names if not _plain_name(n)]
        if bad:
            raise ValueError(f"entries that are not plain names in the folder: {bad[:3]}")
        return names
    except (OSError, ValueError) as e:
        raise StoreCorruptError(
            f"{path} is unreadable ({e}); transferscope cannot tell "
            f"its files from others there, so it changes nothing in "
            f"{folder}"
        ) from None


def _plain_name(name):
    return (
        bool(name)
        and name not in (".", "..")
        and "/" not in name
        and os.sep not in name
        and "\0" not in name
    )


# what a store folder of transferscope before manifests (0.1) held
_LEGACY_STORE_FILES = (
    "spec.json",
    "masks.npy",
    "completed.npy",
    "prob.npy",
    "margin.npy",
    "correct.npy",
    "pred.npy",
)
_LEGACY_SUBDIRS = ("curation", "failures", "diversity", "backbone", "holdout")


def _adopt_legacy_store(folder):
    """A store written before manifests: records the files such a store wrote."""
    if os.path.exists(os.path.join(folder, MANIFEST)) or not os.path.exists(
        os.path.join(folder, "spec.json")
    ):
        return
    present = [
        n for n in _LEGACY_STORE_FILES + _LEGACY_SUBDIRS if os.path.exists(os.path.join(folder, n))
    ]
    write_json(os.path.join(folder, MANIFEST), sorted(present))


def claim(folder, name):
    """Records ``name`` in ``folder``'s manifest (before it is created there)."""
    _adopt_legacy_store(folder)
    names = read_manifest(folder)
    if name in names:
        return
    os.makedirs(folder, exist_ok=True)
    write_json(os.path.join(folder, MANIFEST), sorted(names + [name]))


def make_dirs(path):
    """Creates ``path`` and any missing parents, claiming each one it creates in
    its parent's manifest, except in a folder that is not transferscope's (no
    manifest there): nothing is written outside the folders it made."""
    path = os.path.abspath(path)
    missing = []
    head = path
    while not os.path.exists(head):
        missing.append(head)
        head = os.path.dirname(head)
    for folder in reversed(missing):
        parent = os.path.dirname(folder)
        if parent != head or os.path.exists(os.path.join(parent, MANIFEST)):
            claim(parent, os.path.basename(folder))
        os.makedirs(folder, exist_ok=True)
    if not os.path.isdir(path):
        raise ForeignFilesError(f"{path} exists and is not a directory")


def check_dir_is_ours(folder):
    """Refuses a directory that holds entries its manifest does not name."""
    if not os.path.exists(folder):
        return
    if not os.path.isdir(folder):
        raise ForeignFilesError(f"{folder} exists and is not a directory")
    _adopt_legacy_store(folder)
    names = set(read_manifest(folder)) | {MANIFEST}
    # a file being replaced (written as <name>.tmp, then renamed) is ours too
    foreign = sorted(
        n for n in set(os.listdir(folder)) - names if not (n.endswith(".tmp") and n[:-4] in names)
    )
    if foreign:
        raise ForeignFilesError(
            f"{folder} holds files transferscope did not write (e.g. {foreign[:3]}); "
            f"choose a new or empty directory"
        )


def clear_dir(folder: str):
    """Deletes what transferscope wrote in ``folder`` (recursively, by the
    manifests) and ``folder`` itself if that leaves it empty; nothing else."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        return
    for name in read_manifest(folder):
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            clear_dir(path)
        elif os.path.lexists(path):
            os.remove(path)
        if os.path.exists(path + ".tmp"):
            os.remove(path + ".tmp")
    manifest = os.path.join(folder, MANIFEST)
    for leftover in (manifest + ".tmp", manifest):
        if os.path.exists(leftover):
            os.remove(leftover)
    if not os.listdir(folder):
        os.rmdir(folder)
        parent = os.path.dirname(folder)
        names = [n for n in read_manifest(parent) if n != os.path.basename(folder)]
        if os.path.exists(os.path.join(parent, MANIFEST)):
            write_json(os.path.join(parent, MANIFEST), names)


def remove_scratch(folder: str):
    """Removes a scratch folder that transferscope made (its parent's manifest
    names it) for a library to write in, with everything the library wrote
    there; a folder the manifest does not name is refused and left alone."""
    import shutil

    folder = os.path.abspath(folder)
    parent, name = os.path.split(folder)
    if not os.path.lexists(folder):
        return
    if name not in read_manifest(parent) or os.path.islink(folder):
        raise ForeignFilesError(f"{folder} is not a scratch folder transferscope made; left alone")
    shutil.rmtree(folder)
    write_json(os.path.join(parent, MANIFEST), [n for n in read_manifest(parent) if n != name])


# --- arrays -------------------------------------------------------------------


def _check_npy(path, dtype, shape):
    """Refuses a ``.npy`` file whose header or size do not match ``dtype``/``shape``."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            file_shape, fortran, file_dtype = read_header(f)
            offset = f.tell()
    except (OSError, ValueError, EOFError) as e:
        raise StoreCorruptError(f"{path} is not a readable .npy file ({e})") from None
    if tuple(file_shape) != tuple(shape) or np.dtype(file_dtype) != np.dtype(dtype):
        raise StoreCorruptError(
            f"{path} holds {file_dtype}{tuple(file_shape)}, expected "
            f"{np.dtype(dtype)}{tuple(shape)}"
        )
    expected = offset + int(np.prod(shape)) * np.dtype(dtype).itemsize
    size = os.path.getsize(path)
    if size != expected:
        raise StoreCorruptError(
            f"{path} is {size} bytes, expected {expected} (truncated or extended)"
        )


def save_array(folder, name, array):
    """Writes ``array`` to ``folder/name`` (a ``.npy``), claimed in the manifest
    first and replaced atomically (a killed write leaves the old file or
    none); returns its path."""
    make_dirs(folder)
    claim(folder, name)
    path = os.path.join(folder, name)
    tmp = path + ".tmp"
    with named_when_full(tmp), open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
    os.replace(tmp, path)
    return path


def load_array(path, dtype=None, shape=None):
    """A ``.npy`` written by :func:`save_array`, memory-mapped read-only; with
    ``dtype`` and ``shape``, a file that does not match is refused
    (:class:`StoreCorruptError`)."""
    if dtype is not None and shape is not None:
        _check_npy(path, dtype, shape)
    return np.load(path, mmap_mode="r", allow_pickle=False)


def row_checksum(outputs):
    """A 63-bit hash of one model's outputs (every output, in a fixed order)."""
    h = hashlib.blake2b(digest_size=8)
    for name in OUTPUT_NAMES:
        h.update(np.ascontiguousarray(np.asarray(outputs[name], dtype=_DTYPES[name])).tobytes())
    return int.from_bytes(h.digest(), "little") >> 1


class ResultsStore:
    def __init__(self, path, spec, arrays):
        self.path = path
        self.spec = spec
        self._arrays = arrays

    @classmethod
    def open(cls, path, config_hash, masks, num_targets, meta=None):
        """Opens the store at ``path``, creating it if needed.

        Raises :class:`StoreMismatchError` when ``path`` holds a store whose
        config hash, masks or shape differ, :class:`StoreCorruptError` when a
        file is damaged, and :class:`ForeignFilesError` when ``path`` holds
        files transferscope did not write.
        """
        path = os.path.abspath(path)
        spec_path = os.path.join(path, "spec.json")
        num_models, num_classes = masks.shape
        spec = {
            "config_hash": config_hash,
            "num_models": int(num_models),
            "num_classes": int(num_classes),
            "num_targets": int(num_targets),
            "outputs": list(OUTPUT_NAMES),
            "meta": meta or {},
        }
        check_dir_is_ours(path)
        shape = (num_models, num_targets)
        if os.path.exists(spec_path):
            old = _load_spec(spec_path)
            for key in ("config_hash", "num_models", "num_classes", "num_targets"):
                if old.get(key) != spec[key]:
                    raise StoreMismatchError(
                        f"the results store at {path} was written with another "
                        f"configuration or data ({key}: {old.get(key)!r} != "
                        f"{spec[key]!r}); use a new output directory or overwrite"
                    )
            masks_path = os.path.join(path, "masks.npy")
            _check_npy(masks_path, bool, masks.shape)
            stored_masks = np.load(masks_path, allow_pickle=False)
            if not np.array_equal(stored_masks, masks):
                raise StoreMismatchError(f"the class masks stored at {path} differ")
            arrays = _open_arrays(path, shape, "r+")
            store = cls(path, old, arrays)
            store._verify_rows(repair=True)
            return store
        make_dirs(path)
        for name in (
            "masks.npy",
            *(f"{n}.npy" for n in OUTPUT_NAMES),
            "checksums.npy",
            "completed.npy",
            "spec.json",
        ):
            claim(path, name)
        np.save(os.path.join(path, "masks.npy"), masks)
        arrays = _open_arrays(path, shape, "w+")
        for arr in arrays.values():
            arr.flush()
        # spec last: a store without spec.json is not a store yet
        write_json(spec_path, spec)
        return cls(path, spec, arrays)

    @classmethod
    def load(cls, path):
        """Opens an existing store read-only (damaged rows refused, naming them)."""
        path = os.path.abspath(path)
        spec_path = os.path.join(path, "spec.json")
        if not os.path.exists(spec_path):
            raise FileNotFoundError(f"no results store at {path}")
        spec = _load_spec(spec_path)
        shape = (spec["num_models"], spec["num_targets"])
        _check_npy(os.path.join(path, "masks.npy"), bool, (spec["num_models"], spec["num_classes"]))
        store = cls(path, spec, _open_arrays(path, shape, "r"))
        store._verify_rows(repair=False)
        return store

    def _verify_rows(self, repair):
        sums = self._arrays.get("checksums")
        if sums is None:  # a store from before checksums: trust its rows
            return
        done = np.flatnonzero(self.completed)
        bad = [
            int(i)
            for i in done
            if int(sums[i]) != row_checksum({n: self._arrays[n][i] for n in OUTPUT_NAMES})
        ]
        if not bad:
            return
        if not repair:
            raise StoreCorruptError(
                f"{len(bad)} completed row(s) of the store at {self.path} do not match "
                f"their checksum (rows {bad[:5]}); run the job that wrote it again to "
                f"retrain them"
            )
        logger.warning(
            "%d row(s) of %s do not match their checksum (rows %s); they will be trained again",
            len(bad),
            self.path,
            bad[:5],
        )
        self._arrays["completed"][bad] = False
        self._arrays["completed"].flush()

    @property
    def masks(self):
        return np.load(os.path.join(self.path, "masks.npy"), allow_pickle=False)

    @property
    def completed(self):
        return np.asarray(self._arrays["completed"], dtype=bool)

    def pending(self):
        return [int(i) for i in np.flatnonzero(~self.completed)]

    def is_complete(self):
        return bool(self.completed.all())

    def write(self, index, outputs):
        """Writes model ``index``'s row and checksum, flushes them, then marks it complete."""
        for name in OUTPUT_NAMES:
            self._arrays[name][index] = outputs[name]
            self._arrays[name].flush()
        self._arrays["checksums"][index] = row_checksum(outputs)
        self._arrays["checksums"].flush()
        self._arrays["completed"][index] = True
        self._arrays["completed"].flush()

    def outputs(self, name, only_completed=True):
        """The ``(M', T)`` array of one output over the finished models."""
        if name not in OUTPUT_NAMES:
            raise ValueError(f"unknown output {name!r}; expected one of {OUTPUT_NAMES}")
        arr = np.asarray(self._arrays[name])
        return arr[self.completed] if only_completed else arr


def _open_arrays(path, shape, mode):
    """The memory-mapped outputs, checksums and completed flags, each checked first."""
    arrays = {}
    num_models = shape[0]
    specs = [(n, _DTYPES[n], shape) for n in OUTPUT_NAMES]
    specs += [("checksums", np.int64, (num_models,)), ("completed", bool, (num_models,))]
    for name, dtype, shp in specs:
        file = os.path.join(path, f"{name}.npy")
        if mode != "w+":
            if name == "checksums" and not os.path.exists(file):
                if mode == "r":
                    continue  # read-only, from before checksums
                arrays[name] = _add_checksums(path, arrays, num_models)
                continue
            _check_npy(file, dtype, shp)
        if mode == "w+":  # blocks reserved: a full disk raises here, not SIGBUS later
            arrays[name] = open_memmap_reserved(file, dtype, shp)
        else:
            arrays[name] = np.lib.format.open_memmap(file, mode=mode, dtype=dtype, shape=shp)
    return arrays


def _add_checksums(path, arrays, num_models):
    """Checksums for a store written before they existed (its rows are trusted)."""
    claim(path, "checksums.npy")
    file = os.path.join(path, "checksums.npy")
    sums = open_memmap_reserved(file, np.int64, (num_models,))
    done = np.load(os.path.join(path, "completed.npy"), allow_pickle=False)
    for i in np.flatnonzero(done):
        sums[i] = row_checksum({n: arrays[n][i] for n in OUTPUT_NAMES})
    sums.flush()
    return sums


def _load_spec(spec_path):
    try:
        with open(spec_path) as f:
            spec = json.load(f)
        for key in ("config_hash", "num_models", "num_classes", "num_targets"):
            if key not in spec:
                raise ValueError(f"no {key!r}")
        return spec
    except (OSError, ValueError) as e:
        raise StoreCorruptError(
            f"{spec_path} is unreadable ({e}); run again with overwrite=True to rebuild the store"
        ) from None


def write_json(path, obj):
    """Writes ``obj`` as JSON at ``path`` atomically (a temporary file, then a rename)."""
    tmp = path + ".tmp"
    with named_when_full(tmp), open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
