"""Leak search at scale: transferscope's FAISS search against FiftyOne Brain's
``compute_leaky_splits`` and scikit-learn brute-force neighbours, on the same
embeddings, in one run.

Images: composites of two rendered glyphs (from the demo's fonts) at random
offsets, 32x32. Planted leaks: ``--planted`` target images copied into the
pretraining set, an equal share each exact, noised, shifted, resized and
re-contrasted ("recoloured" for grayscale). Embeddings: a small ResNet (width
32) trained for four epochs on the demo's glyph classes, at 32x32, centred by
the pretraining mean (every method gets the same vectors).

A target sample is flagged when its nearest pretraining vector lies within
``--threshold`` cosine distance. Prints recall and precision on the planted
leaks per method and kind, and wall times as ratios to FAISS measured in the
same run. Writes the figures as JSON next to this file (``results/``).

    .venv/bin/python benchmarks/leakage_benchmark.py                  # 100k x 10k
    .venv/bin/python benchmarks/leakage_benchmark.py --pretrain 20000 --target 2000
"""

import argparse
import json
import os
import platform
import time
import uuid

import numpy as np

KINDS = ("exact", "noise", "shift", "resize", "contrast")


def composites(pool, n, rng):
    """``n`` 32x32 images, each the brighter of two random glyphs shifted."""
    a = pool[rng.integers(len(pool), size=n)].astype(np.int16)
    b = pool[rng.integers(len(pool), size=n)].astype(np.int16)
    shifts = rng.integers(-6, 7, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):  # one roll per image: cheap at 32x32
        b[i] = np.roll(b[i], (dy, dx), axis=(0, 1))
    return np.maximum(a, (b * rng.uniform(0.4, 0.9, size=(n, 1, 1))).astype(np.int16)).astype(
        np.uint8
    )


def build_images(num_pretrain, num_target, num_planted, seed):
    from transferscope import demo_data

    rng = np.random.default_rng(seed)
    arrays = demo_data.make_demo_arrays(per_class=80, seed=seed)
    pool = arrays.pretrain_images  # 32x32 glyphs
    pre = composites(pool, num_pretrain, rng)
    tgt = composites(pool, num_target, rng)
    planted_t = rng.choice(num_target, num_planted, replace=False)
    slots = rng.choice(num_pretrain, num_planted, replace=False)
    kinds = np.resize(np.array(KINDS), num_planted)
    for t, s, kind in zip(planted_t, slots, kinds):
        pre[s] = demo_data._near_copy(tgt[t], kind, rng)
    return arrays, pre, tgt, planted_t, kinds


def embed(arrays, pre, tgt, seed):
    from transferscope.compute import InfluenceConfig, TransferData
    from transferscope.compute.train import embed_images, pretrain_network

    def small(imgs):  # (N, 32, 32) -> (N, 32, 32, 1)
        return imgs[..., None]

    glyphs = small(arrays.pretrain_images)
    data = TransferData(
        glyphs,
        arrays.pretrain_labels,
        len(arrays.class_names),
        glyphs[:10],
        np.zeros(10, int),
        glyphs[:10],
        np.zeros(10, int),
        1,
    )
    config = InfluenceConfig(
        num_models=2, epochs=4, width=32, image_size=32, seed=seed, device="cpu"
    )
    net, _, device = pretrain_network(config, 0, np.ones(data.num_pretrain_classes, bool), data)
    norm = data.normalisation()
    p = embed_images(net, small(pre), device, norm)
    t = embed_images(net, small(tgt), device, norm)
    mean = p.mean(axis=0)
    return p - mean, t - mean


def score(flagged, planted_t, kinds, num_target):
    flagged = np.asarray(flagged, bool)
    truth = np.zeros(num_target, bool)
    truth[planted_t] = True
    tp = int((flagged & truth).sum())
    per_kind = {k: float(flagged[planted_t[kinds == k]].mean()) for k in KINDS}
    return {
        "recall": tp / truth.sum(),
        "precision": tp / max(1, flagged.sum()),
        "flagged": int(flagged.sum()),
        "recall_by_kind": per_kind,
    }


def run_faiss(p, t, threshold, kind):
    from transferscope.compute.neighbors import NeighborIndex

    t0 = time.perf_counter()
    index = NeighborIndex(p, kind=kind, device="auto", center=False)
    dist, _ = index.search(t, 1)
    seconds = time.perf_counter() - t0
    return (
        dist[:, 0] <= threshold,
        seconds,
        {"index": index.kind, "on_gpu": index.on_gpu, "recall_at_1": index.recall(t, 1)},
    )


def run_pixels(pre_images, tgt_images):
    """detect_leakage's pixel matching at its defaults (standard transformations,
    match correlation 0.98, mutual best), on the images rather than the vectors."""
    from transferscope.compute import matching as mt

    from transferscope.leakage import DEFAULT_MATCH_THRESHOLD

    t0 = time.perf_counter()
    m = mt.match_copies(pre_images, tgt_images, "standard")
    flagged = (m["ncc"] >= DEFAULT_MATCH_THRESHOLD) & m["mutual"]
    return flagged, time.perf_counter() - t0, {"match_threshold": DEFAULT_MATCH_THRESHOLD}


def run_sklearn(p, t, threshold):
    from sklearn.neighbors import NearestNeighbors

    t0 = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=1, metric="cosine", algorithm="brute").fit(p)
    dist, _ = nn.kneighbors(t)
    return dist[:, 0] <= threshold, time.perf_counter() - t0, {}


def run_brain(p, t, threshold, backend):
    """compute_leaky_splits on one dataset holding both sides as splits."""
    import fiftyone as fo
    import fiftyone.brain as fob

    import transferscope  # noqa: F401 (registers the faiss backend)

    ds = fo.Dataset(f"leak-bench-{uuid.uuid4().hex[:6]}")
    try:
        n = len(p)
        ds.add_samples(
            [fo.Sample(filepath=f"/nonexistent/{i}.png", tags=["pretrain"]) for i in range(n)]
            + [
                fo.Sample(filepath=f"/nonexistent/t{i}.png", tags=["target"]) for i in range(len(t))
            ],
            progress=False,
        )
        ids = ds.values("id")
        ds.set_values("emb", list(np.concatenate([p, t])))
        t0 = time.perf_counter()
        sim = None
        if backend == "faiss":
            sim = fob.compute_similarity(ds, embeddings="emb", backend="faiss", progress=False)
        index = fob.compute_leaky_splits(
            ds,
            splits=["pretrain", "target"],
            embeddings="emb",
            similarity_index=sim,
            threshold=threshold,
            progress=False,
        )
        seconds = time.perf_counter() - t0
        leaks = set(index.leak_ids)
        flagged = np.array([ids[n + i] in leaks for i in range(len(t))])
        return flagged, seconds, {"backend": backend}
    finally:
        ds.delete()


def faiss_scale(sizes, num_target, dim, seed):
    """FAISS alone at larger sizes, on synthetic vectors with planted noisy copies."""
    from transferscope.compute.neighbors import NeighborIndex

    rng = np.random.default_rng(seed)
    out = {}
    for n in sizes:
        p = rng.normal(size=(n, dim)).astype(np.float32)
        t = rng.normal(size=(num_target, dim)).astype(np.float32)
        planted = rng.choice(num_target, num_target // 20, replace=False)
        slots = rng.choice(n, len(planted), replace=False)
        p[slots] = t[planted] + rng.normal(0, 0.05, size=(len(planted), dim)).astype(np.float32)
        row = {}
        for kind in ("flat", "ivf"):
            t0 = time.perf_counter()
            index = NeighborIndex(p, kind=kind, device="auto", center=False)
            built = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, idx = index.search(t, 1)
            searched = time.perf_counter() - t0
            row[kind] = {
                "build_s": built,
                "search_s": searched,
                "planted_found": float((idx[planted, 0] == slots).mean()),
                "recall_at_1": index.recall(t, 1),
            }
            print(
                f"  FAISS {kind} at {n} x {num_target} (dim {dim}): build {built:.1f} s, "
                f"search {searched:.1f} s, planted copies found "
                f"{row[kind]['planted_found']:.3f}, recall@1 {row[kind]['recall_at_1']:.3f}",
                flush=True,
            )
            del index
        out[str(n)] = row
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pretrain", type=int, default=100_000)
    parser.add_argument("--target", type=int, default=10_000)
    parser.add_argument("--planted", type=int, default=500)
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.035,
        help="cosine distance (best F1 for FAISS at 10k x 1k: 0.035)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-brain", action="store_true")
    parser.add_argument(
        "--faiss-sizes",
        default="",
        help="also time FAISS alone at these pretraining sizes (comma-separated)",
    )
    args = parser.parse_args()
    os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    if "FIFTYONE_DATABASE_NAME" not in os.environ:  # keep the user's database clean
        os.environ["FIFTYONE_DATABASE_NAME"] = f"transferscope_bench_{uuid.uuid4().hex[:6]}"

    t0 = time.perf_counter()
    arrays, pre, tgt, planted_t, kinds = build_images(
        args.pretrain, args.target, args.planted, args.seed
    )
    p, t = embed(arrays, pre, tgt, args.seed)
    print(
        f"{len(p)} pretraining x {len(t)} target vectors, dim {p.shape[1]}, "
        f"{args.planted} planted leaks; images and embeddings in "
        f"{time.perf_counter() - t0:.0f} s"
    )

    rows = {}
    for name, fn in (
        ("transferscope FAISS (exact)", lambda: run_faiss(p, t, args.threshold, "flat")),
        ("transferscope FAISS (IVF)", lambda: run_faiss(p, t, args.threshold, "ivf")),
        ("scikit-learn brute force", lambda: run_sklearn(p, t, args.threshold)),
        ("transferscope pixel matching (images)", lambda: run_pixels(pre, tgt)),
        (
            "fiftyone.brain compute_leaky_splits (sklearn)",
            None if args.skip_brain else lambda: run_brain(p, t, args.threshold, "sklearn"),
        ),
        (
            "fiftyone.brain compute_leaky_splits (faiss backend)",
            None if args.skip_brain else lambda: run_brain(p, t, args.threshold, "faiss"),
        ),
    ):
        if fn is None:
            continue
        flagged, seconds, extra = fn()
        rows[name] = {"seconds": seconds, **score(flagged, planted_t, kinds, len(t)), **extra}
        print(f"  {name}: {seconds:.2f} s", flush=True)

    base = rows["transferscope FAISS (exact)"]["seconds"]
    print(f"\nthreshold {args.threshold} (cosine distance); times relative to FAISS exact")
    print(
        f"{'method':<52s} {'time':>9s} {'x FAISS':>8s} {'recall':>7s} {'precision':>9s}  "
        + " ".join(f"{k:>8s}" for k in KINDS)
    )
    for name, r in rows.items():
        print(
            f"{name:<52s} {r['seconds']:8.2f}s {r['seconds'] / base:8.1f} {r['recall']:7.3f} "
            f"{r['precision']:9.3f}  " + " ".join(f"{r['recall_by_kind'][k]:8.2f}" for k in KINDS)
        )

    scale = {}
    if args.faiss_sizes:
        print("\nFAISS alone, synthetic 128-d vectors:")
        scale = faiss_scale(
            [int(x) for x in args.faiss_sizes.split(",")], args.target, 128, args.seed
        )
    out = {
        "faiss_scale": scale,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
        },
        "args": vars(args),
        "dim": int(p.shape[1]),
        "rows": rows,
    }
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"leakage_{args.pretrain}x{args.target}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
