"""Nearest neighbours with FAISS: leaks between datasets, duplicates within one.

Distances are cosine distances (``1 - cos``, in ``[0, 2]``) between vectors
that are optionally centred (by the index set's mean, as FiftyOne Brain's
sklearn backend does) and then L2-normalised, so an inner-product index gives
exact cosine similarity. One code path: GPU FAISS when a GPU build and a GPU
are present, faiss-cpu otherwise.
"""

import os

import numpy as np
from scipy import sparse, stats
from scipy.sparse import csgraph

from .checks import check_number

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")
# After FAISS had run multithreaded, torch training in the same process
# segfaulted once in our test suite, so CPU FAISS runs single-threaded unless
# TRANSFERSCOPE_FAISS_THREADS says otherwise. FAISS and torch share one OpenMP
# thread setting here, so this also leaves torch on that many threads for the
# rest of the process; giving torch its count back right after a FAISS call
# aborted the process once in our test suite, so it is not done (see README).
FAISS_THREADS_ENV = "TRANSFERSCOPE_FAISS_THREADS"


def set_faiss_threads():
    """Sets FAISS's thread count (see FAISS_THREADS_ENV); called before each FAISS call."""
    import faiss

    faiss.omp_set_num_threads(int(os.environ.get(FAISS_THREADS_ENV, "1")))


# Up to this many index vectors an exact (flat) search is both exact and fast
# enough; measured in benchmarks/leakage_benchmark.py
EXACT_MAX = 250_000


def as_vectors(x, name, ids=None):
    """``x`` as a C-contiguous float32 ``(N, D)`` array; refuses bad values.

    Raises ValueError naming ``name`` (and a sample id from ``ids``) when
    ``x`` is empty, not 2-D, not numeric, or holds NaN / infinite values.
    """
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array; got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if len(bad):
        where = f"sample {ids[bad[0]]}" if ids is not None else f"row {bad[0]}"
        raise ValueError(f"{name}: {len(bad)} vector(s) hold NaN or infinite values, e.g. {where}")
    return arr


def _unit_rows(x, name, ids=None):
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        where = f"sample {ids[zero[0]]}" if ids is not None else f"row {zero[0]}"
        raise ValueError(
            f"{name}: {len(zero)} vector(s) are zero after centring, "
            f"e.g. {where}; their cosine distance is undefined"
        )
    return x / norms


def gpu_available():
    """Whether FAISS can use a GPU here (a GPU build and at least one GPU)."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


class NeighborIndex:
    """A FAISS index over ``vectors`` answering cosine-distance queries.

    Args:
        vectors: ``(N, D)`` index vectors
        kind: ``"flat"`` (exact), ``"ivf"`` (inverted lists), ``"hnsw"``
            (graph; CPU only) or ``"auto"``: flat up to ``EXACT_MAX``
            vectors, IVF beyond
        device: ``"auto"`` (GPU when available), ``"cpu"`` or ``"cuda"``
        center: subtract the index vectors' mean (from queries too)
        nlist, nprobe: IVF lists and lists searched (defaults from N)
        ids: optional names of the rows, for error messages
    """

    def __init__(
        self,
        vectors,
        kind="auto",
        device="auto",
        center=True,
        nlist=None,
        nprobe=None,
        hnsw_m=32,
        ef_search=128,
        ids=None,
        name="index vectors",
        seed=0,
    ):
        import faiss

        if kind not in INDEX_KINDS:
            raise ValueError(f"kind must be one of {INDEX_KINDS}; got {kind!r}")
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda'; got {device!r}")
        x = as_vectors(vectors, name, ids)
        self.mean = x.mean(axis=0) if center else np.zeros(x.shape[1], np.float32)
        self.vectors = _unit_rows(x - self.mean, name, ids)
        n, d = self.vectors.shape
        self.dim = d
        self.kind = ("flat" if n <= EXACT_MAX else "ivf") if kind == "auto" else kind
        use_gpu = device == "cuda" or (device == "auto" and gpu_available())
        if device == "cuda" and not gpu_available():
            raise RuntimeError(
                "device='cuda' was asked for but FAISS has no GPU here "
                "(install faiss-gpu on a machine with a GPU)"
            )
        if self.kind == "hnsw":
            use_gpu = False  # FAISS has no GPU HNSW
            index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
        elif self.kind == "ivf":
            nlist = nlist or int(np.clip(4 * np.sqrt(n), 1, max(1, n // 39)))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
            index.nprobe = nprobe or min(nlist, max(8, nlist // 16))
        else:
            index = faiss.IndexFlatIP(d)
        self.on_gpu = bool(use_gpu)
        set_faiss_threads()
        if self.on_gpu:
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, 0, index)
        if self.kind == "ivf":
            rng = np.random.default_rng(seed)
            train = self.vectors[rng.choice(n, min(n, 256 * nlist), replace=False)]
            index.train(train)
        index.add(self.vectors)
        self._index = index

    def __len__(self):
        return len(self.vectors)

    def prepare(self, queries, name="query vectors", ids=None):
        q = as_vectors(queries, name, ids)
        if q.shape[1] != self.dim:
            raise ValueError(
                f"{name} have dimension {q.shape[1]} but the index has "
                f"{self.dim}: embeddings from different models?"
            )
        return _unit_rows(q - self.mean, name, ids)

    def search(self, queries, k=1, prepared=False, name="query vectors", ids=None):
        """The ``k`` nearest index rows of each query: ``(distances, indices)``.

        Both ``(Q, k)``; a missing neighbour (approximate index) has index -1
        and distance ``inf``.
        """
        q = queries if prepared else self.prepare(queries, name, ids)
        k = int(min(k, len(self)))
        set_faiss_threads()
        sims, idx = self._index.search(q, k)
        dist = np.clip(1.0 - sims, 0.0, 2.0).astype(np.float32)
        dist[idx < 0] = np.inf
        return dist, idx

    def self_neighbors(self, k):
        """The ``k`` nearest other rows of every index row (self excluded)."""
        dist, idx = self.search(self.vectors, k + 1, prepared=True)
        rows = np.arange(len(self))[:, None]
        is_self = idx == rows
        # drop the self match where found, else the farthest of the k + 1
        drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
        keep = np.ones_like(idx, dtype=bool)
        keep[np.arange(len(self)), drop] = False
        return dist[keep].reshape(len(self), k), idx[keep].reshape(len(self), k)

    def within(self, queries, max_distance, start_k=16):
        """Every index row within ``max_distance`` of each query, nearest first.

        ``queries``: prepared query vectors, or None for the index rows
        themselves (each row's own match excluded). Returns two lists of
        arrays (distances, indices). A CPU flat index answers with FAISS's
        exact range search; other indexes search the k nearest and double k
        only for the queries whose k-th neighbour is still within range.
        """
        self_query = queries is None
        q = self.vectors if self_query else queries
        n = len(self)
        if len(q) == 0:
            return [], []
        # flat (query row, distance, index row) triples, then one sort: no
        # per-query Python work (the Brain asks this for every sample)
        if self.kind == "flat" and not self.on_gpu:
            set_faiss_threads()
            lims, sims, found = self._index.range_search(q, float(1.0 - max_distance))
            rows = np.repeat(np.arange(len(q)), np.diff(lims.astype(np.int64)))
            dists = np.clip(1.0 - sims, 0, 2)
        else:
            parts = [(np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, np.int64))]
            todo, k = np.arange(len(q)), min(start_k, n)
            while len(todo):
                dist, idx = self.search(q[todo], k, prepared=True)
                full = (dist[:, -1] <= max_distance) & (k < n)
                parts.append((np.repeat(todo[~full], k), dist[~full].ravel(), idx[~full].ravel()))
                todo, k = todo[full], min(2 * k, n)
            rows, dists, found = (np.concatenate(p) for p in zip(*parts))
        keep = (dists <= max_distance) & (found >= 0)
        if self_query:
            keep &= found != rows
        rows, dists, found = rows[keep], dists[keep].astype(np.float32), found[keep]
        order = np.lexsort((dists, rows))  # by query row, then nearest first (stable)
        cuts = np.cumsum(np.bincount(rows, minlength=len(q)))[:-1]
        return (
            np.split(dists[order], cuts),
            np.split(found[order].astype(np.int64), cuts),
        )

    def recall(self, queries, k=1, sample=1000, prepared=False, seed=0):
        """Recall@k of this index against exact search on up to ``sample`` queries.

        1.0 by construction for a flat index.
        """
        if self.kind == "flat":
            return 1.0
        import faiss

        q = queries if prepared else self.prepare(queries)
        rng = np.random.default_rng(seed)
        q = q[rng.choice(len(q), min(sample, len(q)), replace=False)]
        set_faiss_threads()
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(self.vectors)
        _, truth = exact.search(q, k)
        _, found = self._index.search(q, k)
        hits = [len(set(a) & set(b)) for a, b in zip(truth, found)]
        return float(np.sum(hits) / truth.size)


def duplicate_groups(num, pairs):
    """Connected components of a duplicate graph, as group ids.

    Args:
        num: number of items
        pairs: ``(P, 2)`` index pairs that are duplicates of each other

    Returns:
        ``(num,)`` int array: a group id ``0..G-1`` for items in a group of
        two or more, ``-1`` for the rest; groups numbered by their first item
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = sparse.coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(num, num))
    num_comp, comp = csgraph.connected_components(graph, directed=False)
    in_group = np.bincount(comp)[comp] > 1
    # number the groups in order of their first item
    comps, first = np.unique(comp[in_group], return_index=True)
    remap = np.full(num_comp, -1, dtype=np.int64)
    remap[comps[np.argsort(first)]] = np.arange(len(comps))
    return np.where(in_group, remap[comp], -1)


def near_pairs(index, max_distance, k=16):
    """Pairs of index rows within ``max_distance`` of each other (k nearest only)."""
    dist, idx = index.self_neighbors(k)
    rows, cols = np.nonzero((dist <= max_distance) & (idx >= 0))
    return np.stack([rows, idx[rows, cols]], axis=1)


def equal_value_pairs(values):
    """Pairs of items with the same value (e.g. the same content hash)."""
    first = {}
    pairs = []
    for i, v in enumerate(values):
        if v in first:
            pairs.append((first[v], i))
        else:
            first[v] = i
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def exact_copies(pretrain_values, target_values):
    """``(target rows, pretraining rows)`` of targets whose value (a content hash)
    some pretraining item shares: its first such item. ``None`` matches nothing."""
    first = {}
    for j, v in enumerate(pretrain_values):
        if v is not None:
            first.setdefault(v, j)
    hits = [(t, first[v]) for t, v in enumerate(target_values) if v is not None and v in first]
    rows = np.asarray(hits, dtype=np.int64).reshape(-1, 2)
    return rows[:, 0], rows[:, 1]


def matched_influence_support(influence, target_cols, class_rows):
    """:func:`influence_support` of each target where both its column of
    ``influence`` and its nearest image's class row are known (``>= 0``); 0 elsewhere."""
    target_cols, class_rows = np.asarray(target_cols), np.asarray(class_rows)
    ok = (target_cols >= 0) & (class_rows >= 0)
    support = np.zeros(len(target_cols))
    if ok.any():
        infl = np.asarray(influence, dtype=np.float64)[:, target_cols[ok]]
        support[ok] = influence_support(infl, class_rows[ok])
    return support


def influence_support(influence, nearest_class):
    """How unusually the nearest image's class helps each target sample.

    ``z[t] = (Infl[c_t -> t] - mean_c Infl[c -> t]) / std_c Infl[c -> t]``
    with ``c_t`` the class of target ``t``'s nearest pretraining image: a
    leak makes its copy's class stand out among the classes that help ``t``.
    """
    infl = np.asarray(influence, dtype=np.float64)
    cols = np.arange(infl.shape[1])
    std = infl.std(axis=0)
    std[std == 0] = 1.0
    return (infl[nearest_class, cols] - infl.mean(axis=0)) / std


def leak_scores(distance, max_distance, support_z=None, influence_weight=0.25):
    """Leak score in ``[0, 1]`` from distance and (optionally) influence.

    ``closeness = max(0, 1 - d / max_distance)`` (1 for an exact copy, 0 at
    or beyond ``max_distance``); with influence,
    ``score = max(closeness, closeness ** (1 - w) * Phi(z) ** w)`` where
    ``Phi(z)`` is the normal CDF of :func:`influence_support` (0.5 for a
    class that helps as much as a typical class). Influence can only add
    suspicion: at a few dozen models its z-score is mostly noise, and it must
    not outvote the pixels (an exact copy scores 1 whatever its class does).
    Without influence, ``score = closeness``.
    """
    return combined_leak_scores(closeness(distance, max_distance), support_z, influence_weight)


def closeness(distance, max_distance):
    """``max(0, 1 - d / max_distance)``: 1 for an exact copy, 0 at ``max_distance``."""
    check_number(max_distance, "max_distance", 0, 2, low_open=True)
    return np.clip(1.0 - np.asarray(distance, np.float64) / max_distance, 0.0, 1.0)


def combined_leak_scores(closeness, support_z=None, influence_weight=0.25):
    """:func:`leak_scores` from a closeness in ``[0, 1]`` already computed."""
    check_number(influence_weight, "influence_weight", 0, 1, high_open=True)
    closeness = np.asarray(closeness, np.float64)
    if support_z is None or influence_weight == 0:
        return closeness
    support = stats.norm.cdf(np.asarray(support_z, np.float64))
    return np.maximum(closeness, closeness ** (1 - influence_weight) * support**influence_weight)


def calibrated_cut(reference_distances, false_positive_rate):
    """The distance below which a sample that is not a leak falls with
    probability at most ``false_positive_rate``.

    ``reference_distances``: nearest-pretraining distances of images known not
    to be leaks and exchangeable with the checked ones (for example the
    target's train split). The cut is their ``k``-th smallest value with
    ``k = floor(rate * (n + 1))`` (split conformal): for a new non-leak
    ``P(d < cut) <= rate`` over the draw of both, with no assumption on the
    distribution. ``rate`` below ``1 / (n + 1)`` would need more reference
    images than there are, and is refused.
    """
    d = np.sort(np.asarray(reference_distances, dtype=np.float64))
    n = len(d)
    rate = check_number(false_positive_rate, "false_positive_rate", 0, 1, True, True)
    k = int(np.floor(rate * (n + 1)))
    if k < 1:
        raise ValueError(
            f"false_positive_rate {rate:g} needs at least {int(np.ceil(1 / rate)) - 1} "
            f"reference images; there are {n} (the smallest rate they support is "
            f"{1 / (n + 1):.3g})"
        )
    return float(d[k - 1])


def centroid_samples(vectors, k, seed):
    """Indices of ``k`` samples nearest to the centroids of a FAISS k-means."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    set_faiss_threads()
    # small classes are the normal case here: no "too few points" warning
    km = faiss.Kmeans(x.shape[1], k, niter=20, seed=seed, verbose=False, min_points_per_centroid=1)
    km.train(x)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, nearest = index.search(km.centroids, min(len(x), 8))
    picked = []
    for row in nearest:  # the nearest sample not picked yet
        for i in row:
            if i not in picked:
                picked.append(int(i))
                break
    rest = [i for i in range(len(x)) if i not in picked]
    picked += rest[: k - len(picked)]  # rare: centroids sharing all their neighbours
    return np.array(picked[:k])
