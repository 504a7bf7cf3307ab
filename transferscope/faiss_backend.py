"""A ``faiss`` backend for FiftyOne Brain's ``compute_similarity``.

The Brain ships sklearn, Qdrant, LanceDB, ... backends but none for FAISS.
This one keeps the sklearn backend's storage (embeddings in the run results
or in a field) and its query logic, and answers every neighbour query with
:class:`transferscope.compute.neighbors.NeighborIndex` (exact or IVF/HNSW,
GPU when present) instead of a dense distance matrix or a scikit-learn tree::

    import fiftyone.brain as fob
    import transferscope  # registers the backend

    index = fob.compute_similarity(dataset, embeddings="emb", backend="faiss",
                                   brain_key="faiss_sim")
    view = dataset.sort_by_similarity(dataset.first().id, k=20, brain_key="faiss_sim")

Only the cosine metric is supported (the Brain's default).
"""

import fiftyone.brain as fb
import numpy as np
from fiftyone.brain.internal.core.sklearn import (
    SklearnSimilarity,
    SklearnSimilarityConfig,
    SklearnSimilarityIndex,
)

from .compute.neighbors import NeighborIndex

BACKEND = "faiss"
CONFIG_CLS = f"{__name__}.FaissSimilarityConfig"


def register():
    """Adds ``faiss`` to ``fiftyone.brain.brain_config.similarity_backends``."""
    fb.brain_config.similarity_backends.setdefault(BACKEND, {"config_cls": CONFIG_CLS})


class FaissSimilarityConfig(SklearnSimilarityConfig):
    """Configuration of the FAISS similarity backend.

    Args:
        metric ("cosine"): only ``"cosine"``
        index_kind ("auto"): ``"flat"`` (exact), ``"ivf"``, ``"hnsw"`` or
            ``"auto"`` (flat up to 250k vectors, IVF beyond)
        device ("auto"): ``"auto"``, ``"cpu"`` or ``"cuda"``
        **kwargs: :class:`fiftyone.brain.similarity.SimilarityConfig` arguments
    """

    def __init__(self, metric="cosine", index_kind="auto", device="auto", **kwargs):
        if metric != "cosine":
            raise ValueError(f"the faiss backend supports metric='cosine' only; got {metric!r}")
        super().__init__(metric=metric, **kwargs)
        self.index_kind = index_kind
        self.device = device

    @property
    def method(self):
        return BACKEND


class FaissSimilarity(SklearnSimilarity):
    def initialize(self, samples, brain_key):
        return FaissSimilarityIndex(samples, self.config, brain_key, backend=self)


class FaissSimilarityIndex(SklearnSimilarityIndex):
    """The sklearn index's storage and queries, answered by FAISS."""

    def _get_neighbors(self, can_use_neighbors=True, can_use_dists=True):
        keep = self._current_inds
        helper = getattr(self, "_faiss_helper", None)
        if helper is None or not np.array_equal(helper.keep_inds, keep):
            vectors = self._embeddings if keep is None else self._embeddings[keep]
            helper = FaissNeighbors(vectors, keep, self.config.index_kind, self.config.device)
            self._faiss_helper = helper
        # no dense distance matrix: FAISS answers every query
        return (helper if can_use_neighbors else None), None

    def reload(self):
        self._faiss_helper = None
        super().reload()


class FaissNeighbors:
    """The part of scikit-learn's ``NearestNeighbors`` API the Brain uses."""

    _cosine_hack = False  # distances are cosine distances already

    def __init__(self, vectors, keep_inds, kind, device):
        self.keep_inds = keep_inds
        # centred, as the sklearn backend does, so the two agree
        self.index = NeighborIndex(
            vectors, kind=kind, device=device, center=True, name="similarity index embeddings"
        )

    def kneighbors(self, X=None, n_neighbors=5, return_distance=True):
        if X is None:  # every indexed item, itself excluded (sklearn semantics)
            dist, idx = self.index.self_neighbors(n_neighbors)
        else:
            dist, idx = self.index.search(X, n_neighbors)
        return (dist, idx) if return_distance else idx

    def radius_neighbors(self, X=None, radius=0.2, return_distance=True):
        """Neighbours within ``radius`` (cosine distance), nearest first."""
        dist, idx = self.index.within(None if X is None else self.index.prepare(X), radius)
        inds = np.empty(len(idx), dtype=object)
        dists = np.empty(len(idx), dtype=object)
        inds[:], dists[:] = idx, dist
        return (dists, inds) if return_distance else inds
