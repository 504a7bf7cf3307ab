"""Decoding many images into the cache: time and peak memory at paper-like scale.

Writes ``--images`` synthetic RGB photos-like PNG files (smooth colour fields
with shapes, ``--source-px`` square, a tenth of them 4:3) and decodes them
with ``compute.images.decode_images`` at ``--size`` px, three times:

1. cold: every file decoded, in chunks, straight into the memory-mapped cache;
2. cached: the same files again (read from the cache);
3. added: 1% more files (only those decoded, the rest copied from the cache).

For each, the wall time and the peak of Python-tracked memory (tracemalloc,
which numpy reports to; the memory-mapped cache file is not counted, as it
lives in the page cache), next to the size of one decoded chunk and of the
whole decoded array U.

    .venv/bin/python benchmarks/decode_memory.py --images 200000 --size 32

Writes benchmarks/results/decode_memory.json.
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from transferscope.compute import images  # noqa: E402


def write_images(folder, count, px, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:px, :px] / px
    paths = []
    for i in range(count):
        c = rng.uniform(0, 255, (3, 3))
        rgb = c[:, 0, None, None] + c[:, 1, None, None] * xx + c[:, 2, None, None] * yy
        cy, cx, r = rng.uniform(0.2, 0.8, 3)
        rgb[:, (yy - cy) ** 2 + (xx - cx) ** 2 < (r / 3) ** 2] = rng.uniform(0, 255, (3, 1))
        img = np.clip(rgb, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        if i % 10 == 0:  # some 4:3 photos, for the centre crop
            img = np.asarray(Image.fromarray(img).resize((px * 4 // 3, px)))
        path = os.path.join(folder, f"{i:07d}.png")
        Image.fromarray(img).save(path, compress_level=1)
        paths.append(path)
    return paths


def timed(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, {"seconds": round(seconds, 2), "peak_mb": round(peak / 1e6, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--source-px", type=int, default=48)
    parser.add_argument("--folder", default=None, help="default: a temporary folder, removed")
    args = parser.parse_args()

    folder = args.folder or tempfile.mkdtemp(prefix="decode-bench-")
    os.makedirs(folder, exist_ok=True)
    cache = os.path.join(folder, "cache")
    os.environ[images.IMAGE_CACHE_ENV] = cache
    try:
        t0 = time.perf_counter()
        extra = max(1, args.images // 100)
        paths = write_images(folder, args.images + extra, args.source_px, seed=0)
        write_s = time.perf_counter() - t0
        base, more = paths[: args.images], paths
        _, cold = timed(lambda: images.decode_images(base, base, args.size, 3))
        _, cached = timed(lambda: images.decode_images(base, base, args.size, 3))
        _, added = timed(lambda: images.decode_images(more, more, args.size, 3))
        one_image = args.size * args.size * 3
        out = {
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "images": args.images,
            "added": extra,
            "size": args.size,
            "source_px": args.source_px,
            "write_files_s": round(write_s, 1),
            "decoded_array_mb": round(args.images * one_image / 1e6, 1),
            "one_chunk_mb": round(images.DECODE_CHUNK * one_image / 1e6, 1),
            "cold": cold,
            "cached": cached,
            "added_1pct": added,
        }
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(out, indent=2))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "decode_memory.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
