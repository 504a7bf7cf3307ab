"""A resumable results store for subset models (after MadryLab/datamodels).

A run directory holds::

    spec.json        config, config hash, shapes, class and sample names
    masks.npy        (M, C) bool, which classes each model saw
    <output>.npy     (M, T) memory-mapped per-model outputs (prob, margin, ...)
    completed.npy    (M,) bool, set only after a model's row is flushed

A model's row is written and flushed before its ``completed`` flag, so a
killed run loses at most the models in flight, and a resumed run retrains
only the models whose flag is unset. Nothing here is pickled: JSON and
``.npy`` (loaded with ``allow_pickle=False``) only.
"""

import json
import os

import numpy as np

from .train import OUTPUT_NAMES

_DTYPES = {"prob": np.float32, "margin": np.float32, "correct": np.float32, "pred": np.int32}


class StoreMismatchError(ValueError):
    """The run directory was written for another configuration or data."""


class ResultsStore:
    def __init__(self, path, spec, arrays):
        self.path = path
        self.spec = spec
        self._arrays = arrays

    @classmethod
    def open(cls, path, config_hash, masks, num_targets, meta=None):
        """Opens the store at ``path``, creating it if needed.

        Raises :class:`StoreMismatchError` when ``path`` holds a store whose
        config hash, masks or shape differ.
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
        if os.path.exists(spec_path):
            with open(spec_path) as f:
                old = json.load(f)
            for key in ("config_hash", "num_models", "num_classes", "num_targets"):
                if old.get(key) != spec[key]:
                    raise StoreMismatchError(
                        f"the results store at {path} was written with another "
                        f"configuration or data ({key}: {old.get(key)!r} != "
                        f"{spec[key]!r}); use a new output directory or overwrite"
                    )
            stored_masks = np.load(os.path.join(path, "masks.npy"), allow_pickle=False)
            if not np.array_equal(stored_masks, masks):
                raise StoreMismatchError(f"the class masks stored at {path} differ")
            mode = "r+"
        else:
            os.makedirs(path, exist_ok=True)
            np.save(os.path.join(path, "masks.npy"), masks)
            mode = "w+"
        arrays = {}
        for name in OUTPUT_NAMES:
            arrays[name] = np.lib.format.open_memmap(
                os.path.join(path, f"{name}.npy"), mode=mode,
                dtype=_DTYPES[name], shape=(num_models, num_targets),
            )
        arrays["completed"] = np.lib.format.open_memmap(
            os.path.join(path, "completed.npy"), mode=mode, dtype=bool,
            shape=(num_models,),
        )
        if mode == "w+":
            for arr in arrays.values():
                arr.flush()
            # spec last: a store without spec.json is not a store yet
            _write_json(spec_path, spec)
        return cls(path, spec, arrays)

    @classmethod
    def load(cls, path):
        """Opens an existing store read-only."""
        path = os.path.abspath(path)
        spec_path = os.path.join(path, "spec.json")
        if not os.path.exists(spec_path):
            raise FileNotFoundError(f"no results store at {path}")
        with open(spec_path) as f:
            spec = json.load(f)
        arrays = {
            name: np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r",
                          allow_pickle=False)
            for name in list(OUTPUT_NAMES) + ["completed"]
        }
        return cls(path, spec, arrays)

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
        """Writes model ``index``'s row, flushes it, then marks it complete."""
        for name in OUTPUT_NAMES:
            self._arrays[name][index] = outputs[name]
            self._arrays[name].flush()
        self._arrays["completed"][index] = True
        self._arrays["completed"].flush()

    def outputs(self, name, only_completed=True):
        """The ``(M', T)`` array of one output over the finished models."""
        if name not in OUTPUT_NAMES:
            raise ValueError(f"unknown output {name!r}; expected one of {OUTPUT_NAMES}")
        arr = np.asarray(self._arrays[name])
        return arr[self.completed] if only_completed else arr


def _write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
