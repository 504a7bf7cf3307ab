"""What each piece of the pixel matching contributes, on the demo's planted leaks.

On the demo arrays (6,245 pretraining glyphs with both planted leaks, 1,697
target test scans; no FiftyOne, no training), at the default match threshold:

- ``none``: the untransformed thumbnails only (search and verification);
- ``shifts``: shifts of up to 2 pixels;
- ``standard``: shifts, rotations up to 16 degrees, crops and shrinks down to 80%
  (the default);

each with and without the mutual-best rule (a matched pretraining image
counts for its closest target only). Per configuration: recall of the first
leak (exact, noised, shifted, resized, re-contrasted copies of 20 test 7s),
recall of the second by kind (rotation, crop and resize, JPEG), precision,
and the matching time, next to the ``none`` configuration's time.

    .venv/bin/python benchmarks/leak_matching.py

Writes benchmarks/results/leak_matching_demo.json.
"""

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from transferscope.compute import matching as mt  # noqa: E402

from transferscope import demo_data  # noqa: E402
from transferscope.leakage import DEFAULT_MATCH_THRESHOLD  # noqa: E402


def score(flagged, first, kind_of):
    truth = np.zeros(len(flagged), bool)
    truth[list(first)] = True
    truth[list(kind_of)] = True
    by_kind = {}
    for t, kind in kind_of.items():
        by_kind.setdefault(kind, []).append(bool(flagged[t]))
    hits = int((flagged & truth).sum())
    return {
        "flagged": int(flagged.sum()),
        "recall": hits / int(truth.sum()),
        "precision": hits / max(1, int(flagged.sum())),
        "recall_first_leak": float(flagged[list(first)].mean()),
        "recall_by_kind": {k: float(np.mean(v)) for k, v in sorted(by_kind.items())},
    }


def main():
    arrays = demo_data.make_demo_arrays()
    planted = arrays.planted
    first = set(planted.leaked_test_indices)
    kind_of = {v["test_index"]: v["kind"] for v in planted.transformed_leak_variants}
    rows = []
    for name in ("none", "shifts", "standard"):
        t0 = time.perf_counter()
        m = mt.match_copies(arrays.pretrain_images, arrays.test_images, name, device="cpu")
        seconds = time.perf_counter() - t0
        above = m["ncc"] >= DEFAULT_MATCH_THRESHOLD
        for mutual in (False, True):
            flagged = above & m["mutual"] if mutual else above
            row = {"augmentations": name, "mutual_best": mutual, "seconds": seconds}
            rows.append(row | score(flagged, first, kind_of))
            print(json.dumps(rows[-1]))
    base = rows[0]["seconds"]
    for row in rows:
        row["time_vs_none"] = row["seconds"] / base
    out = {
        "match_threshold": DEFAULT_MATCH_THRESHOLD,
        "num_pretrain": len(arrays.pretrain_images),
        "num_targets": len(arrays.test_images),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "rows": rows,
    }
    path = os.path.join(os.path.dirname(__file__), "results", "leak_matching_demo.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
