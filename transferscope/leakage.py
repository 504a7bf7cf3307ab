"""Leakage between a target task and its pretraining set, and near-duplicates within it.

``detect_leakage``: for every target (test) sample, its nearest pretraining
image by FAISS (exact copies also by content hash), scored with the influence
signal of a class-influence run when one is named. ``find_near_duplicates``:
groups of near-identical images inside the pretraining set.
"""

from __future__ import annotations

import logging
import time

import fiftyone as fo
import numpy as np

from . import embeddings as tse
from . import views as tsv
from .compute import matching as mt
from .compute import neighbors as nb
from .influence_run import InfluenceRun
from .results import JobResults, counts_plotly
from .runs import commit_run, load_sample_run, open_write
from .views import DatasetLike, Progress, SplitLike, TransferScopeError

logger = logging.getLogger(__name__)

# near-duplicates inside one dataset: chosen on the demo's run-backbone embeddings
DEFAULT_MAX_DISTANCE = 0.01
# verified NCC from which a pixel match is a leak; chosen on the demo (docs/demo.md)
DEFAULT_MATCH_THRESHOLD = 0.98
EMBEDDING_CANDIDATES = 4  # nearest neighbours in the embeddings, verified by pixels too


class LeakageResults(JobResults):
    """What :func:`detect_leakage` found: likely leaks, byte-identical copies, the index."""

    def describe(self):
        q = self["nearest_distance_quantiles"]
        return [
            f"{self['num_leaks']} of {self['num_targets']} target samples are likely "
            f"leaks ({self['num_exact_file_copies']} byte-identical to a pretraining file, "
            f"{self.get('num_pixel_copies', 0)} with identical pixels in other bytes)",
            f"index {self['index']}{' on the GPU' if self['on_gpu'] else ''}, recall@1 "
            f"{self['recall_at_1']:.3f}; nearest cosine distance of the targets: 1% "
            f"{q['1%']:g}, 5% {q['5%']:g}, median {q['50%']:g}",
        ]

    def plotly(self):
        return counts_plotly(
            "Target samples and likely leaks",
            [
                ("checked", self["num_targets"]),
                ("likely leaks", self["num_leaks"]),
                ("byte-identical", self["num_exact_file_copies"]),
                ("identical pixels", self.get("num_pixel_copies", 0)),
            ],
        )


class DuplicateResults(JobResults):
    """What :func:`find_near_duplicates` found: groups of near-identical samples."""

    def describe(self):
        return [
            f"{self['num_groups']} near-duplicate groups of {self['num_grouped_samples']} "
            f"samples (of {self['num_samples']}; {self['num_exact_pairs']} byte-identical "
            f"pairs); index {self['index']}{' on the GPU' if self['on_gpu'] else ''}"
        ]

    def plotly(self):
        return counts_plotly(
            "Samples in near-duplicate groups",
            [
                ("samples", self["num_samples"]),
                ("grouped", self["num_grouped_samples"]),
                ("groups", self["num_groups"]),
            ],
        )


def leakage_fields(key):
    return [
        f"{key}_score",
        f"{key}_distance",
        f"{key}_nearest_id",
        f"{key}_nearest_label",
        f"{key}_influence_z",
        f"{key}_match",
        f"{key}_transform",
    ]


def duplicate_fields(key):
    return [f"{key}_group"]


def _embed_sources(influence_key, embeddings_field, model):
    named = [
        n
        for n, v in (
            ("influence_key", influence_key),
            ("embeddings_field", embeddings_field),
            ("model", model),
        )
        if v is not None
    ]
    if not named:
        raise TransferScopeError(
            "name an embeddings source: influence_key= (a class-influence "
            "run's backbone), embeddings_field= or model="
        )
    return named


@tsv.renamed_keywords(run_key="influence_key")
def detect_leakage(
    target_dataset: DatasetLike,
    pretrain_dataset: DatasetLike | None = None,
    key: str = "leakage",
    influence_key: str | None = None,
    embeddings_field: str | None = None,
    pretrain_embeddings_field: str | None = None,
    model: str | None = None,
    weights_path: str | None = None,
    image_size: int = 64,
    target_split: SplitLike | None = None,
    split_by: str = "tags",
    split_field: str = "split",
    pretrain_label_field: str = "ground_truth",
    max_distance: float | None = None,
    threshold: float = 0.5,
    augmentations: str | None = "standard",
    match_threshold: float = DEFAULT_MATCH_THRESHOLD,
    false_positive_rate: float | None = None,
    calibration_split: SplitLike | None = None,
    sample_influence_key: str | None = None,
    influence_weight: float = 0.25,
    index: str = "auto",
    device: str = "auto",
    tag: str = "leak",
    hash_files: bool = True,
    overwrite: bool = False,
    progress: Progress = None,
) -> LeakageResults:
    """Finds target samples that (nearly) copy a pretraining image.

    Evidence, strongest first; each can only raise a sample's leak score in
    [0, 1] (see :func:`transferscope.compute.neighbors.leak_scores`):

    - with ``hash_files``, a byte-identical file or identical decoded pixels:
      score 1, whatever else says;
    - with ``augmentations`` (default ``"standard"``), a verified pixel match
      (:mod:`transferscope.compute.matching`): the target and its shifted,
      rotated and cropped-and-resized versions are searched among the
      pretraining thumbnails (and its nearest neighbours in the embeddings),
      each candidate is aligned and compared by normalised cross-correlation,
      and a target that is its match's best reaches ``threshold`` at NCC
      ``match_threshold``; robust to re-encoding (JPEG), noise, contrast,
      small shifts, rotations up to about 16 degrees and crops down to 80%;
    - the embeddings' cosine distance, when a cut is set (``max_distance``)
      or calibrated (``false_positive_rate``): closeness 1 at distance 0,
      0 at ``max_distance``; without a cut the embeddings only propose
      candidates for the pixel verification;
    - with ``influence_key`` (or ``sample_influence_key``): the score is
      raised, never lowered, when the matched image's class (or the image)
      helps the sample unusually. Samples scoring ``>= threshold`` get ``tag``.

    Embeddings (one source): ``influence_key`` (the run's backbone: one network
    pretrained on every class with the run's protocol), ``embeddings_field``
    (on both datasets; ``pretrain_embeddings_field`` if named differently) or
    ``model`` (a torchvision name, with local ``weights_path``).

    Writes on the target samples ``<key>_score``, ``<key>_distance`` (in the
    embeddings), ``<key>_nearest_id`` and ``<key>_nearest_label`` (the
    strongest evidence's image), with a run ``<key>_influence_z``, and with
    pixel matching ``<key>_match`` (the best verified NCC) and
    ``<key>_transform`` (what aligned it, e.g. ``"rotate +8"``); the saved view ``<key>_likely_leaks``; and a run
    ``key`` on the target dataset (deleting it removes all of this).

    Args:
        target_dataset: the target dataset or view
        pretrain_dataset: the pretraining dataset (default: the run's)
        target_split: which target samples to check (default: the run's test
            split with ``influence_key``, else every sample); as in
            :func:`transferscope.compute_class_influence`
        max_distance: cosine distance in (0, 2] at which the embeddings'
            closeness reaches 0 (default: none, or calibrated with
            ``false_positive_rate``)
        threshold: leak score in (0, 1] from which a sample is tagged
        augmentations: ``"standard"``, ``"shifts"``, ``"none"`` (pixel
            matching without transformations) or None (no pixel matching)
        match_threshold: verified NCC in (0, 1) at which a pixel match
            reaches ``threshold`` (default 0.98; calibrated with
            ``false_positive_rate``)
        false_positive_rate: in (0, 1): calibrate the cut from the data
            instead: the nearest-pretraining distances and pixel matches of
            target images that are not checked (the run's train split with
            ``influence_key``, else ``calibration_split``) set
            ``max_distance`` and ``match_threshold`` so that a non-leak is
            tagged by either with at most this probability (half of it
            each; split conformal; see
            :func:`transferscope.compute.neighbors.calibrated_cut`). The
            influence term can add to it. The cut, the reference size and the
            expected number of false positives go into the summary
            (``calibration``).
        calibration_split: the reference images without ``influence_key``
            (a split of the target dataset, disjoint from the checked one)
        influence_weight: weight of the influence signal in [0, 1)
        index: ``"auto"``, ``"flat"``, ``"ivf"`` or ``"hnsw"``
        device: for FAISS and the embedding network
        progress: ``callable(step, num_steps)``
        sample_influence_key: a sample-influence run on these datasets: the
            influence signal is then how unusually the nearest pretraining
            *image* helps the sample (its TRAK score against the others in
            the sample's column), instead of its class

    Returns:
        a :class:`LeakageResults`: a dict of what was found (counts, index kind
        and recall, timings), with ``describe()`` and ``plotly()``
    """
    tsv.check_number(threshold, "threshold", 0, 1, low_open=True)
    tsv.check_number(influence_weight, "influence_weight", 0, 1, high_open=True)
    tsv.validate_tag(tag)
    _check_index_kind(index)
    _check_matching(augmentations, match_threshold)
    sources = _embed_sources(influence_key, embeddings_field, model)
    run_embeds = sources == ["influence_key"]
    _check_cut(max_distance, false_positive_rate, calibration_split, influence_key, run_embeds)
    target = tsv.load_dataset(target_dataset, "target_dataset")
    if pretrain_dataset is None and influence_key is None and sample_influence_key is not None:
        pretrain_dataset = load_sample_run(target, sample_influence_key)[1].pretrain_dataset
    run, pretrain = _leakage_datasets(target, pretrain_dataset, influence_key)
    if run is not None:
        pretrain_label_field = run.run_config.pretrain_label_field
    sample_run = _sample_run(target, pretrain, sample_influence_key)
    root = target._root_dataset
    fields = leakage_fields(key)
    with open_write(root, key, "leakage", overwrite, fields) as write:
        report = tsv.step_reporter(progress, 4)
        t0 = time.perf_counter()
        split = (target_split, split_by, split_field)
        calibrate = calibration_split if false_positive_rate is not None else None
        if run_embeds:
            calibrating = false_positive_rate is not None
            pre, tgt, ref = _run_embeddings(run, pretrain, target, split, device, calibrating)
        else:
            source = (embeddings_field, pretrain_embeddings_field, model, weights_path)
            pre, tgt, ref = _other_embeddings(
                run, pretrain, target, split, calibrate, source, image_size, device
            )
        if len(tgt.ids) == 0:
            raise TransferScopeError("no target samples to check")
        seconds = {"embed": time.perf_counter() - t0}
        report(1)
        index_, queries = _index(pre, index, device, tgt, seconds)
        report(2)
        dist, idx, near_rows, recall = _nearest(index_, queries, seconds)
        pixels = _PixelMatcher(pretrain, root, pre, augmentations, device)
        cut = (max_distance, match_threshold, None)
        if false_positive_rate is not None:
            cut = _calibrate(index_, pixels, ref, false_positive_rate, threshold, len(tgt.ids))
        max_distance, match_threshold, calibration = cut
        closeness = _embedding_closeness(dist, max_distance)
        exact = _exact_evidence(pretrain, root, pre, tgt, dist, idx, closeness, hash_files)
        matches = pixels.match(tgt.ids, near_rows, seconds)
        closeness = _with_pixel_evidence(closeness, idx, matches, match_threshold, threshold)
        report(3)

        nearest_labels = _nearest_labels(pre, idx, pretrain, pretrain_label_field)
        support = _influence_support(run, sample_run, tgt, pre.ids[idx], nearest_labels)
        weight = influence_weight if support is not None else 0.0
        scores = nb.combined_leak_scores(closeness, support, weight)
        ids = [str(i) for i in tgt.ids]
        leaks = [i for i, s in zip(ids, scores) if s >= threshold]
        summary = _leakage_summary(ids, pre, leaks, exact, index_, recall, dist, seconds)
        summary["calibration"] = calibration
        summary["num_transformed_copies"] = _count_transformed(matches, scores, threshold)
        params = dict(
            pretrain_dataset=pretrain._root_dataset.name,
            run_key=influence_key,  # stored under its 0.2 name
            sample_influence_key=sample_influence_key,
            embeddings=sources[-1] if len(sources) > 1 else sources[0],
            embeddings_field=embeddings_field,
            model=model,
            max_distance=max_distance,
            threshold=threshold,
            augmentations=augmentations,
            match_threshold=match_threshold if augmentations is not None else None,
            false_positive_rate=false_positive_rate,
            influence_weight=weight,
            index=index_.kind,
            tag=tag,
        )
        columns = (scores, dist, [str(i) for i in pre.ids[idx]], nearest_labels, support)
        columns += _match_columns(matches)
        _commit_leakage(
            write, root, key, fields, ids, columns, summary, params, threshold, leaks, tag
        )
        report(4)
        return LeakageResults(summary)


class _PixelMatcher:
    """Pixel evidence (:mod:`transferscope.compute.matching`) for one search:
    the pretraining thumbnails are loaded once, for the targets and for a
    calibration's reference images alike; off when ``augmentations`` is None."""

    def __init__(self, pretrain, root, pre, augmentations, device):
        self.on = augmentations is not None
        self.augmentations, self.root, self.device = augmentations, root, device
        self._pretrain, self._pre, self._thumbs = pretrain, pre, None

    def match(self, ids, extra_rows=None, seconds=None):
        if not self.on:
            return None
        t0 = time.perf_counter()
        if self._thumbs is None:
            self._thumbs = tse.thumbnails(self._pretrain, self._pre.ids)
        try:
            out = mt.match_copies(
                self._thumbs,
                tse.thumbnails(self.root, ids),
                self.augmentations,
                extra_candidates=extra_rows,
                device=self.device,
            )
        except ValueError as e:
            raise TransferScopeError(str(e)) from e
        if seconds is not None:
            seconds["match"] = time.perf_counter() - t0
        return out


def _nearest(index_, queries, seconds):
    """Each query's nearest index row and distance, its ``EMBEDDING_CANDIDATES``
    nearest rows (candidates for the pixel check), and the index's recall@1."""
    t0 = time.perf_counter()
    dist, rows = index_.search(queries, EMBEDDING_CANDIDATES, prepared=True)
    seconds["search"] = time.perf_counter() - t0
    recall = index_.recall(queries, k=1, prepared=True)
    return dist[:, 0].astype(np.float64), rows[:, 0].copy(), rows, recall


def _exact_evidence(pretrain, root, pre, tgt, dist, idx, closeness, hash_files):
    """Byte- and pixel-identical copies (with ``hash_files``): closeness 1 (in place)."""
    if not hash_files:
        return {"bytes": 0, "pixels": 0}
    exact = _mark_exact_copies(pretrain, root, pre, tgt, dist, idx)
    closeness[exact.pop("rows")] = 1.0
    return exact


def _with_pixel_evidence(closeness, idx, matches, match_threshold, threshold):
    """The closeness raised by the verified pixel matches (None: unchanged);
    where they are the stronger evidence, ``idx`` (changed in place) names
    the matched image."""
    if matches is None:
        return closeness
    by_pixels = mt.match_closeness(matches, match_threshold, threshold)
    better = by_pixels > closeness
    idx[better] = matches["index"][better]
    return np.maximum(closeness, by_pixels)


def _embedding_closeness(dist, max_distance):
    """Closeness by embedding distance; without a cut (neither ``max_distance``
    nor a calibration) the embeddings only propose candidates for the pixels."""
    if max_distance is None:
        return np.zeros(len(dist))
    return nb.closeness(dist, max_distance)


def _count_transformed(matches, scores, threshold):
    """Leaks whose evidence is a verified match under a transformation (not identity)."""
    if matches is None:
        return 0
    moved = np.array([t not in ("", "identity") for t in matches["transform"]], dtype=bool)
    return int((moved & matches["mutual"] & (np.asarray(scores) >= threshold)).sum())


def _match_columns(matches):
    if matches is None:
        return (None, None)
    return (matches["ncc"], list(matches["transform"]))


def _sample_run(target, pretrain, key):
    """The results of sample-influence run ``key`` of these datasets, or None."""
    if key is None:
        return None
    root, config = load_sample_run(target, key, "target_dataset")
    if config.target_dataset != root.name or config.pretrain_dataset != pretrain._root_dataset.name:
        raise TransferScopeError(
            f"run {key!r} scores {config.pretrain_dataset!r} for {config.target_dataset!r}, "
            f"not {pretrain._root_dataset.name!r} for {root.name!r}"
        )
    return root.load_run_results(key, cache=False)


def _influence_support(run, sample_run, tgt, nearest_ids, nearest_labels):
    """How unusually each target's nearest pretraining image (with a sample run) or
    its class (with a class run) helps it, as a z-score; None without a run."""
    if sample_run is not None:
        return nb.matched_influence_support(
            sample_run.scores(),
            _positions([str(i) for i in tgt.ids], sample_run.target_ids),
            _positions([str(i) for i in nearest_ids], sample_run.pretrain_ids),
        )
    if run is None:
        return None
    results = run.results
    return nb.matched_influence_support(
        results.influence,
        _positions(tgt.ids, results.target_ids),
        _positions(nearest_labels, results.classes),
    )


def _leakage_summary(ids, pre, leaks, exact, index_, recall, dist, seconds):
    return {
        "num_targets": len(ids),
        "num_pretrain": len(pre.ids),
        "num_leaks": len(leaks),
        "num_exact_file_copies": exact["bytes"],
        "num_pixel_copies": exact["pixels"],  # same decoded pixels, other bytes
        "index": index_.kind,
        "on_gpu": index_.on_gpu,
        "recall_at_1": recall,
        # to choose max_distance: how far typical target samples are from the pretraining set
        "nearest_distance_quantiles": dict(
            zip(("1%", "5%", "50%"), np.quantile(dist, [0.01, 0.05, 0.5]).round(5).tolist())
        ),
        "seconds": seconds,
        "leak_ids": leaks,
    }


def _check_matching(augmentations, match_threshold):
    """The pixel-matching settings, by the matcher's own checks (None: matching off)."""
    try:
        if augmentations is not None:
            mt.check_augmentations(augmentations)
        mt.check_match_threshold(match_threshold)
    except ValueError as e:
        off = " (or None: no pixel matching)" if "augmentations" in str(e) else ""
        raise TransferScopeError(f"{e}{off}") from None


def _check_index_kind(index):
    if index not in nb.INDEX_KINDS:
        raise TransferScopeError(f"index must be one of {nb.INDEX_KINDS}; got {index!r}")


def _leakage_datasets(target, pretrain_dataset, influence_key):
    """The class-influence run (or None) and the pretraining dataset to search."""
    run = None
    if influence_key is not None:
        run = InfluenceRun.load(target, influence_key)
        run_pre, _ = run.datasets
        pretrain = tsv.load_dataset(pretrain_dataset or run_pre, "pretrain_dataset")
        if pretrain._root_dataset.name != run_pre.name:
            raise TransferScopeError(
                f"run {influence_key!r} was computed on pretraining dataset "
                f"{run_pre.name!r}, not {pretrain._root_dataset.name!r}"
            )
    elif pretrain_dataset is None:
        raise TransferScopeError("pretrain_dataset is required without influence_key")
    else:
        pretrain = tsv.load_dataset(pretrain_dataset, "pretrain_dataset")
    if pretrain._root_dataset.name == target._root_dataset.name:
        raise TransferScopeError("pretrain_dataset and target_dataset must differ")
    return run, pretrain


def _run_embeddings(run, pretrain, target, split, device, with_train):
    """The run backbone's embeddings of its pretraining, (chosen) test and (with
    ``with_train``, for a calibration; else None) train samples, within the
    views passed (the run embeds all of its samples)."""
    pre, tgt, *train = tse.from_run(
        run, device=None if device == "auto" else device, with_train=with_train
    )
    train = train[0] if train else None
    if split[0] is not None:
        keep = set(tsv.resolve_split(target, *split).values("id"))
        rows = np.array([i in keep for i in tgt.ids])
        tgt = tse.Embedded(tgt.ids[rows], tgt.vectors[rows])
    return _within(pre, pretrain, "pretrain_dataset"), _within(tgt, target, "target_dataset"), train


def _check_cut(max_distance, false_positive_rate, calibration_split, influence_key, run_embeds):
    """The leak cut is set (``max_distance``) or calibrated (``false_positive_rate``)."""
    if max_distance is not None and false_positive_rate is not None:
        raise TransferScopeError(
            "pass max_distance or false_positive_rate (which calibrates it), not both"
        )
    if max_distance is not None:
        tsv.check_number(max_distance, "max_distance", 0, 2, low_open=True)
    if false_positive_rate is None:
        if calibration_split is not None:
            raise TransferScopeError("calibration_split is used only with false_positive_rate")
        return
    tsv.check_number(false_positive_rate, "false_positive_rate", 0, 1, True, True)
    if run_embeds and calibration_split is not None:
        raise TransferScopeError(
            "with the run's backbone as embeddings, its train split is the calibration's "
            "reference: calibration_split is not used"
        )
    if influence_key is None and calibration_split is None:
        raise TransferScopeError(
            "false_positive_rate needs reference images that are not leaks: pass "
            "calibration_split (for example the target's train split), or influence_key "
            "(its run's train split)"
        )


def _reference_view(target, checked, calibration_split, split_by, split_field):
    """The target images that calibrate the cut: a split disjoint from the checked one."""
    ref = tsv.resolve_split(target, calibration_split, split_by, split_field)
    shared = set(ref.values("id")) & set(checked.values("id"))
    if shared:
        raise TransferScopeError(
            f"calibration_split shares {len(shared)} sample(s) with the samples checked; "
            "the reference must be disjoint from them"
        )
    return ref


def _calibrate(index_, pixels, ref, false_positive_rate, threshold, num_checked):
    """``max_distance`` and ``match_threshold`` that put the tagging cut at the
    calibrated distance and NCC, and what the summary says about them. With
    pixel matching on, each evidence gets half the rate (a union bound)."""
    rate = false_positive_rate / 2 if pixels.on else false_positive_rate
    try:
        dist, _ = index_.search(ref.vectors, 1, name="reference embeddings", ids=ref.ids)
        cut = nb.calibrated_cut(dist[:, 0], rate)
        matched = pixels.match(ref.ids)
        # the mutual-best rule is left out here: it can only remove tags
        ncc_cut = None if matched is None else 1.0 - nb.calibrated_cut(1.0 - matched["ncc"], rate)
    except ValueError as e:
        halved = " (half of it for each of the embeddings and the pixel matches)"
        note = halved if pixels.on and "reference images" in str(e) else ""
        raise TransferScopeError(
            f"with false_positive_rate {false_positive_rate:g}{note}: {e}"
        ) from e
    if cut <= 0 or (ncc_cut is not None and ncc_cut >= 1):
        raise TransferScopeError(
            "the calibration's reference images have exact copies in the pretraining set: "
            "they cannot stand for images that are not leaks"
        )
    # closeness = 1 - d / max_distance reaches `threshold` exactly at d = cut
    max_distance = min(2.0, cut / (1.0 - threshold)) if threshold < 1 else cut
    return (
        max_distance,
        ncc_cut,
        {
            "false_positive_rate": false_positive_rate,
            "reference_size": len(ref.ids),
            "cut_distance": cut,
            "max_distance": max_distance,
            "match_threshold": ncc_cut,
            "expected_false_positives": false_positive_rate * num_checked,
        },
    )


def _within(emb, samples, role):
    """The rows of ``emb`` in ``samples`` when that is a view (all for a dataset)."""
    if samples is samples._root_dataset:
        return emb
    keep = set(samples.values("id"))
    rows = np.array([str(i) in keep for i in emb.ids], dtype=bool)
    if not rows.any():
        raise TransferScopeError(f"{role}: the view holds none of the run's samples")
    labels = None if emb.labels is None else [x for x, r in zip(emb.labels, rows) if r]
    return tse.Embedded(emb.ids[rows], emb.vectors[rows], labels)


def _target_view(run, target, target_split, split_by, split_field):
    if target_split is not None:
        return tsv.resolve_split(target, target_split, split_by, split_field)
    if run is not None:  # the run's test split
        return target._root_dataset.select(list(run.results.target_ids))
    return target


def _other_embeddings(run, pretrain, target, split, calibration_split, source, image_size, device):
    """Embeddings of the pretraining, target and (with ``calibration_split``)
    reference images from a field of both datasets, or from a torchvision model."""
    embeddings_field, pretrain_embeddings_field, model, weights_path = source
    target_view = _target_view(run, target, *split)
    views = [pretrain, target_view]
    if calibration_split is not None:
        views.append(_reference_view(target, target_view, calibration_split, *split[1:]))
    roles = ("pretraining", "target", "reference")
    if embeddings_field is not None:
        fields = [pretrain_embeddings_field or embeddings_field] + [embeddings_field] * 2
        out = [tse.from_field(v, f, r) for v, f, r in zip(views, fields, roles)]
    else:
        out = [
            tse.from_model(v, model, weights_path, r, image_size, device)
            for v, r in zip(views, roles)
        ]
    return out[0], out[1], out[2] if len(out) > 2 else None


def _index(pre, index, device, queries_from=None, seconds=None, name="pretraining embeddings"):
    """A FAISS index over ``pre``; with ``queries_from``, also its prepared queries."""
    t0 = time.perf_counter()
    try:
        index_ = nb.NeighborIndex(pre.vectors, kind=index, device=device, ids=pre.ids, name=name)
        queries = None
        if queries_from is not None:
            queries = index_.prepare(queries_from.vectors, "target embeddings", queries_from.ids)
    except ValueError as e:
        raise TransferScopeError(str(e)) from e
    if seconds is not None:
        seconds["build"] = time.perf_counter() - t0
    return index_, queries


def _mark_exact_copies(pretrain, root, pre, tgt, dist, idx):
    """Certain evidence: a target whose file, or whose decoded pixels, some
    pretraining image shares is at distance 0 from it, whatever the
    embeddings say (``dist`` and ``idx`` changed in place); returns the
    numbers of byte-identical and of pixel-identical (re-encoded) copies
    and (``rows``) the targets found."""
    pre_view, tgt_view = pretrain.select(list(pre.ids)), root.select(list(tgt.ids))
    found, all_rows = [], []
    for pixels in (False, True):
        pre_hash = tse.content_hashes(pre_view, pixels=pixels)
        tgt_hash = tse.content_hashes(tgt_view, pixels=pixels)
        rows, matches = nb.exact_copies(
            [pre_hash.get(i) for i in pre.ids], [tgt_hash.get(i) for i in tgt.ids]
        )
        found.append(len(rows))
        all_rows.extend(rows)
        dist[rows], idx[rows] = 0.0, matches
        # a byte-identical copy is pixel-identical too: decode only the others
        tgt_view = tgt_view.exclude([str(tgt.ids[r]) for r in rows])
    return {"bytes": found[0], "pixels": found[1], "rows": np.asarray(all_rows, dtype=np.int64)}


def _nearest_labels(pre, idx, pretrain, label_field):
    if pre.labels is not None:
        return [pre.labels[j] for j in idx]
    if pretrain._root_dataset.has_sample_field(label_field):
        label_of = dict(zip(*pretrain.values(["id", f"{label_field}.label"])))
        return [label_of.get(i) for i in pre.ids[idx]]
    return [None] * len(idx)


def _positions(values, universe):
    """Each value's index in ``universe``, -1 where it is not there."""
    where = {v: i for i, v in enumerate(universe)}
    return np.array([where.get(v, -1) for v in values], dtype=np.int64)


def _commit_leakage(write, root, key, fields, ids, columns, summary, params, threshold, leaks, tag):
    """Writes the per-sample fields (the influence one only with a run), the view, the run."""
    kinds = (fo.FloatField, fo.FloatField, fo.StringField, fo.StringField, fo.FloatField)
    kinds += (fo.FloatField, fo.StringField)
    written = [
        (field, kind, column)
        for field, kind, column in zip(fields, kinds, columns)
        if column is not None
    ]
    values = {
        field: dict(zip(ids, column.tolist() if isinstance(column, np.ndarray) else column))
        for field, _, column in written
    }
    score_f = fields[0]
    commit_run(
        write,
        root,
        "leakage",
        {field: kind for field, kind, _ in written},
        values,
        {
            f"{key}_likely_leaks": lambda: root.match(fo.ViewField(score_f) >= threshold).sort_by(
                score_f, reverse=True
            )
        },
        summary,
        params,
        tagged=(leaks, tag),
    )


@tsv.renamed_keywords(run_key="influence_key")
def find_near_duplicates(
    pretrain_dataset: DatasetLike,
    key: str = "near_duplicates",
    influence_key: str | None = None,
    embeddings_field: str | None = None,
    model: str | None = None,
    weights_path: str | None = None,
    image_size: int = 64,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    num_neighbors: int = 16,
    augmentations: str | None = None,
    match_threshold: float = DEFAULT_MATCH_THRESHOLD,
    index: str = "auto",
    device: str = "auto",
    tag: str = "near_duplicate",
    hash_files: bool = True,
    overwrite: bool = False,
    progress: Progress = None,
) -> DuplicateResults:
    """Groups near-identical images inside a (pretraining) dataset.

    Two samples are linked when one is among the other's ``num_neighbors``
    nearest and their cosine distance is at most ``max_distance``, when
    their files are byte-identical, or (with ``augmentations``, e.g.
    ``"standard"``; off by default) when one is
    the other's best verified pixel match with a normalised cross-correlation
    of at least ``match_threshold``, under the same transformations as
    :func:`detect_leakage` (a rotated or cropped copy joins its source's
    group); groups are the connected components.
    Writes ``<key>_group`` (an integer id) on every sample in a group of two
    or more, adds ``tag`` to them, saves the view ``<key>_groups`` (grouped
    samples sorted by group) and registers run ``key``.

    Embeddings as in :func:`detect_leakage` (``influence_key`` on this dataset's
    class-influence run, ``embeddings_field`` or ``model``).

    Returns:
        a :class:`DuplicateResults`: a dict (number of groups and grouped
        samples, index kind, timings), with ``describe()`` and ``plotly()``
    """
    tsv.check_number(max_distance, "max_distance", 0, 2, low_open=True)
    tsv.validate_tag(tag)
    tsv.check_count(num_neighbors, "num_neighbors")
    _check_matching(augmentations, match_threshold)
    _embed_sources(influence_key, embeddings_field, model)  # refuses none named
    dataset = tsv.load_dataset(pretrain_dataset, "pretrain_dataset")
    root = dataset._root_dataset
    fields = duplicate_fields(key)
    tsv.validate_run_key(key)
    if len(dataset) < 2:
        raise TransferScopeError(f"{root.name!r} has fewer than 2 samples: no duplicates")
    with open_write(root, key, "near_duplicates", overwrite, fields) as write:
        report = tsv.step_reporter(progress, 3)
        t0 = time.perf_counter()
        emb = _dataset_embeddings(
            dataset, influence_key, embeddings_field, model, weights_path, image_size, device
        )
        t_embed = time.perf_counter() - t0
        report(1)

        t0 = time.perf_counter()
        index_, _ = _index(emb, index, device, name="embeddings")
        pairs = nb.near_pairs(index_, max_distance, min(num_neighbors, len(emb.ids) - 1))
        exact_pairs = np.empty((0, 2), dtype=np.int64)
        if hash_files:
            hashes = tse.content_hashes(root.select(list(emb.ids)))
            values = [hashes.get(i) or f"unread:{i}" for i in emb.ids]
            exact_pairs = nb.equal_value_pairs(values)
        pixel_pairs = _pixel_pairs(root, emb.ids, augmentations, match_threshold, device)
        groups = nb.duplicate_groups(
            len(emb.ids), np.concatenate([pairs, exact_pairs, pixel_pairs])
        )
        t_search = time.perf_counter() - t0
        report(2)

        members = np.flatnonzero(groups >= 0)
        ids = [str(emb.ids[i]) for i in members]
        view_name = f"{key}_groups"
        group_f = fields[0]
        summary = {
            "num_samples": len(emb.ids),
            "num_groups": int(groups.max() + 1) if len(members) else 0,
            "num_grouped_samples": len(members),
            "num_exact_pairs": len(exact_pairs),
            "num_pixel_pairs": len(pixel_pairs),
            "index": index_.kind,
            "on_gpu": index_.on_gpu,
            "seconds": {"embed": t_embed, "search": t_search},
        }
        params = dict(
            run_key=influence_key,
            embeddings_field=embeddings_field,
            model=model,
            max_distance=max_distance,
            num_neighbors=num_neighbors,
            augmentations=augmentations,
            match_threshold=match_threshold if augmentations is not None else None,
            index=index_.kind,
            tag=tag,
        )

        commit_run(
            write,
            root,
            "near_duplicates",
            {group_f: fo.IntField},
            {group_f: dict(zip(ids, groups[members].tolist()))},
            {view_name: lambda: root.exists(group_f).sort_by(group_f)},
            summary,
            params,
            tagged=(ids, tag),
        )
        report(3)
        return DuplicateResults(summary)


def _pixel_pairs(root, ids, augmentations, match_threshold, device):
    """``(P, 2)`` rows of ``ids`` linked by a verified pixel match (none when off):
    every verified candidate at ``match_threshold`` or above, not only the
    best, so that all copies of one source share its group."""
    if augmentations is None:
        return np.empty((0, 2), dtype=np.int64)
    thumbs = tse.thumbnails(root, ids)
    try:
        m = mt.match_copies(
            thumbs,
            thumbs,
            augmentations,
            device=device,
            exclude_self=True,
            link_threshold=match_threshold,
        )
    except ValueError as e:
        raise TransferScopeError(str(e)) from e
    return m["pairs"]


def _dataset_embeddings(
    dataset, influence_key, embeddings_field, model, weights_path, image_size, device
):
    """One dataset's embeddings: a field, a torchvision model, or the backbone of
    the class-influence run it is the pretraining dataset of."""
    if embeddings_field is not None:
        return tse.from_field(dataset, embeddings_field, "pretraining")
    if model is not None:
        return tse.from_model(dataset, model, weights_path, "pretraining", image_size, device)
    root = dataset._root_dataset
    run = InfluenceRun.load(root, influence_key)
    run_pre, _ = run.datasets
    if run_pre.name != root.name:
        raise TransferScopeError(
            f"{root.name!r} is not the pretraining dataset of run "
            f"{influence_key!r} (that is {run_pre.name!r})"
        )
    emb, _ = tse.from_run(run, device=None if device == "auto" else device)
    return emb
