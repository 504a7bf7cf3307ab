"""Stored names are hashes: they must not change when the hashing code does."""

import dataclasses

import numpy as np
import pytest
from transferscope.compute import engine
from transferscope.compute.config import InfluenceConfig
from transferscope.compute.curation import CurationPlan
from transferscope.compute.digests import digest, file_digest
from transferscope.compute.train import TransferData


def _data():
    rng = np.random.default_rng(0)

    def imgs(n):
        return rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)

    return TransferData(
        imgs(6), np.arange(6) % 3, 3, imgs(4), np.arange(4) % 2, imgs(2), np.arange(2) % 2, 2
    )


def test_the_names_of_existing_stores_and_plans_are_unchanged():
    # values written by the hashing code of version 0.2.0, before digest() existed
    assert InfluenceConfig(num_models=8).fingerprint("abc") == "c059dc1cf5e67d5b"
    assert _data().fingerprint() == "7ca3b9da1f2aa056"
    assert engine.cells_digest([{"k": 3, "n": 4, "seed": 1}]) == "b8427c7612471a65"
    masks = (np.arange(12).reshape(4, 3) % 2).astype(bool)
    plan = CurationPlan(masks=masks, seeds=np.arange(4), cells=[], removed=[])
    assert plan.fingerprint() == "e6c9f1b56e9aea84"


def test_digest_hashes_parts_in_order_and_arrays_by_their_bytes():
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert digest(a, "x") == digest(a.tobytes() + b"x")
    assert digest(a.T) == digest(np.ascontiguousarray(a.T).tobytes())  # C order, not memory
    assert digest("ab", "c") == digest("a", "bc")  # concatenation: callers add separators
    assert len(digest("x")) == 16 and len(digest("x", length=None)) == 64


def test_digest_refuses_what_has_no_fixed_byte_order():
    with pytest.raises(TypeError, match="dict"):
        digest({"b": 1, "a": 2})


def test_file_digest_is_the_digest_of_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"\x00" * (3 << 20) + b"tail")
    assert file_digest(path) == digest(path.read_bytes(), length=None)


def test_config_fields_stay_in_the_fingerprint_only_when_changed():
    base = InfluenceConfig(num_models=8)
    same = dataclasses.replace(base, label_smoothing=0.1)
    assert same.fingerprint() == base.fingerprint()
    assert dataclasses.replace(base, label_smoothing=0.0).fingerprint() != base.fingerprint()
