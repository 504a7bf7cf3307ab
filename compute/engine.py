"""Runs the subset models that a results store still lacks."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from .digests import digest
from .executors import LocalExecutor, ModelJob, ModelsFailedError
from .nets import network_for, place_network
from .store import ResultsStore, claim, make_dirs
from .subsets import check_design, independent_masks, make_design
from .train import pretrain_network, resolve_device

if TYPE_CHECKING:  # names in annotations only
    from collections.abc import Callable, Sequence

    from .config import InfluenceConfig
    from .executors import Executor
    from .subsets import Design
    from .train import TransferData


def resolve_design(
    config: InfluenceConfig, num_classes: int, class_names: Sequence[str] | None = None
) -> Design:
    """The run's :class:`~.subsets.Design`, refused if some class is not in and
    out of enough subsets. Its ``num_models`` may exceed ``config.num_models``
    (an orthogonal design is rounded up to whole blocks; ``note`` says so)."""
    from .config import MAX_NUM_MODELS

    design = make_design(
        config.design,
        config.num_models,
        num_classes,
        config.alpha,
        config.seed,
        max_models=MAX_NUM_MODELS,
    )
    check_design(design.masks, class_names)
    return design


def design_masks(
    config: InfluenceConfig, num_classes: int, class_names: Sequence[str] | None = None
):
    """The run's ``(M, C)`` class masks (see :func:`resolve_design`)."""
    return resolve_design(config, num_classes, class_names).masks


def open_store(
    path: str,
    config: InfluenceConfig,
    data: TransferData,
    class_names: Sequence[str] | None = None,
    meta: dict | None = None,
) -> ResultsStore:
    """The store for (config, data) at ``path``: new, or resumed if it matches.

    ``config.num_models`` must be the design's own count (see
    :func:`resolve_design`), so that a run's config hash names its models.
    """
    design = resolve_design(config, data.num_pretrain_classes, class_names)
    if design.num_models != config.num_models:
        raise ValueError(
            f"config.num_models is {config.num_models} but its design has "
            f"{design.num_models} models ({design.note}); pass the design's count"
        )
    config_hash = config.fingerprint(data.fingerprint())
    # the caller's note (say, how many models it asked for) wins over the design's
    meta = {**design.describe(), **(meta or {})}
    return ResultsStore.open(path, config_hash, design.masks, len(data.test_labels), meta=meta)


# Held-out models for the linear datamodeling score: independent random
# subsets with their own seeds, far from the subset models' 0..M-1.
HOLDOUT_INDEX_BASE = 4_000_000


def holdout_masks(config, num_classes):
    """``(config.holdout_models, C)``: independent random subsets of ``alpha C`` classes."""
    return independent_masks(
        config.holdout_models, num_classes, config.alpha, seed=HOLDOUT_INDEX_BASE + config.seed
    )


def open_holdout_store(path: str, config: InfluenceConfig, data: TransferData) -> ResultsStore:
    """A resumable store of the run's held-out models (their own hash and masks)."""
    masks = holdout_masks(config, data.num_pretrain_classes)
    rows_hash = digest(masks)
    config_hash = f"{config.fingerprint(data.fingerprint())}/holdout/{rows_hash}"
    return ResultsStore.open(path, config_hash, masks, len(data.test_labels))


def run_holdout_models(
    config: InfluenceConfig,
    data: TransferData,
    store: ResultsStore,
    on_model_done: Callable[[int, int, int], None] | None = None,
    executor: Executor | None = None,
):
    """Trains the held-out models a store lacks (resumable)."""
    indices = HOLDOUT_INDEX_BASE + np.arange(len(store.completed))
    return run_subset_models(
        config, data, store, on_model_done, model_indices=indices, executor=executor
    )


def run_subset_models(
    config: InfluenceConfig,
    data: TransferData,
    store: ResultsStore,
    on_model_done: Callable[[int, int, int], None] | None = None,
    model_indices: Sequence[int] | None = None,
    executor: Executor | None = None,
):
    """Trains every model whose row is not complete, writing each as it ends.

    Args:
        on_model_done: optional ``callable(index, num_done, num_total)``
        model_indices: optional ``(M,)`` model index (hence seed) of each row;
            by default row ``i`` is model ``i``
        executor: where the models train (see :mod:`.executors`; default:
            in this process)

    Returns:
        the indices trained in this call (finished rows are never retrained)

    Raises:
        ModelsFailedError: some models failed; all the others are stored
    """
    masks = store.masks

    def job(index):
        model = index if model_indices is None else int(model_indices[index])
        return ModelJob(index, config, model, masks[index])

    return _train_pending(store, job, data, on_model_done, executor)


def _train_pending(store, job_for_row, data, on_model_done=None, executor=None):
    """Trains ``job_for_row(row)`` for every incomplete row; the driver writes each."""
    executor = executor or LocalExecutor()
    total = len(store.completed)
    pending = store.pending()
    done = total - len(pending)

    def write(row, outputs):
        nonlocal done
        store.write(row, outputs)
        done += 1
        if on_model_done is not None:
            on_model_done(row, done, total)

    failures = executor.run([job_for_row(row) for row in pending], data, write)
    if failures:
        raise ModelsFailedError(failures, done, total)
    return pending


# Retraining indices live far from the subset models' 0..M-1, so a retrained
# model never shares a seed with an influence model.
RETRAIN_INDEX_BASE = 1_000_000


def open_retrain_store(
    path: str,
    config: InfluenceConfig,
    data: TransferData,
    masks: np.ndarray,
    seeds: np.ndarray,
    meta: dict | None = None,
) -> ResultsStore:
    """A resumable store for retrained models, one row per ``(mask, seed)``.

    Seed ``s`` trains as model ``RETRAIN_INDEX_BASE + s`` whatever its
    mask, so rows that share a seed pair up (same initialisation and data
    order, only the classes differ).
    """
    masks = np.asarray(masks, dtype=bool)
    seeds = np.asarray(seeds, dtype=np.int64)
    if masks.ndim != 2 or seeds.shape != (len(masks),):
        raise ValueError(f"need (R, C) masks and (R,) seeds; got {masks.shape} and {seeds.shape}")
    rows_hash = digest(masks, seeds)
    config_hash = f"{config.fingerprint(data.fingerprint())}/retrain/{rows_hash}"
    meta = dict(meta or {}, seeds=seeds.tolist())
    return ResultsStore.open(path, config_hash, masks, len(data.test_labels), meta=meta)


def run_retraining(
    config: InfluenceConfig,
    data: TransferData,
    store: ResultsStore,
    on_model_done: Callable[[int, int, int], None] | None = None,
    executor: Executor | None = None,
):
    """Trains the rows of a retrain store that are not complete (resumable)."""
    seeds = np.asarray(store.spec["meta"]["seeds"], dtype=np.int64)
    return run_subset_models(
        config,
        data,
        store,
        on_model_done,
        model_indices=RETRAIN_INDEX_BASE + seeds,
        executor=executor,
    )


# The backbone used for embeddings: one model on every class, its own seed.
BACKBONE_INDEX = 2_000_000


def load_or_train_backbone(config, data, cache_dir):
    """A network pretrained on every class (same protocol), cached on disk.

    The state dict is saved with ``torch.save`` and read back with
    ``weights_only=True`` (never unpickled), under a name that hashes the
    config and the data, so a cache for other data is never used.
    """
    path = os.path.join(cache_dir, f"backbone-{config.fingerprint(data.fingerprint())}.pt")
    device = resolve_device(config.device)
    if os.path.exists(path):
        net = network_for(config, data.num_pretrain_classes)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return place_network(net, device), device
    everything = np.ones(data.num_pretrain_classes, dtype=bool)
    net, _, device = pretrain_network(config, BACKBONE_INDEX, everything, data)
    make_dirs(cache_dir)
    claim(cache_dir, os.path.basename(path))
    tmp = path + ".tmp"
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
    return net, device


# Diversity sweeps: seed s is model DIVERSITY_INDEX_BASE + s in every cell,
# so the cells of a budget differ only in which classes and samples they see.
DIVERSITY_INDEX_BASE = 3_000_000


def diversity_subset(labels, num_classes, classes_count, per_class, seed, eligible=None):
    """The class mask and sample mask of one ``(K, n)`` cell.

    Classes: ``K`` drawn at random from ``eligible`` (classes with at least
    ``n`` samples; all by default); samples: ``n`` drawn at random within
    each class. Deterministic in ``seed``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, classes_count, per_class])
    pool = np.arange(num_classes) if eligible is None else np.asarray(eligible)
    chosen = rng.choice(pool, classes_count, replace=False)
    class_mask = np.zeros(num_classes, dtype=bool)
    class_mask[chosen] = True
    sample_mask = np.zeros(len(labels), dtype=bool)
    for c in sorted(chosen):
        members = np.flatnonzero(labels == c)
        sample_mask[rng.choice(members, per_class, replace=False)] = True
    return class_mask, sample_mask


def diversity_cell_masks(cell, labels, num_classes):
    """``(class_mask, sample_mask)`` of a sweep cell.

    A cell names ``classes`` (K), ``per_class`` (n) and ``seed`` (random
    classes among those with at least n samples, random samples), or lists
    its pretraining rows in ``sample_rows``.
    """
    labels = np.asarray(labels)
    if cell.get("sample_rows") is not None:
        sample_mask = np.zeros(len(labels), dtype=bool)
        sample_mask[np.asarray(cell["sample_rows"], dtype=np.int64)] = True
        class_mask = np.zeros(num_classes, dtype=bool)
        class_mask[np.unique(labels[sample_mask])] = True
        return class_mask, sample_mask
    counts = np.bincount(labels, minlength=num_classes)
    eligible = np.flatnonzero(counts >= cell["per_class"])
    return diversity_subset(
        labels, num_classes, cell["classes"], cell["per_class"], cell["seed"], eligible
    )


def run_diversity_cells(config, data, store, cells, on_model_done=None, executor=None):
    """Trains the store's pending cells (resumable); row ``i`` is ``cells[i]``.

    Each cell trains for its own ``epochs`` with model seed
    ``DIVERSITY_INDEX_BASE + seed``.
    """

    def job(row):
        cell = cells[row]
        class_mask, sample_mask = diversity_cell_masks(
            cell, data.pretrain_labels, data.num_pretrain_classes
        )
        cell_config = type(config).from_dict({**config.to_dict(), "epochs": cell["epochs"]})
        return ModelJob(
            row, cell_config, DIVERSITY_INDEX_BASE + cell["seed"], class_mask, sample_mask
        )

    return _train_pending(store, job, data, on_model_done, executor)


def cells_digest(cells):
    """A short hash of a list of sweep cells (their JSON)."""
    return digest(json.dumps(cells, sort_keys=True))


def open_cells_store(path, config, data, cells):
    """A resumable store for sweep cells, refused if written for other cells."""
    masks = np.array(
        [diversity_cell_masks(c, data.pretrain_labels, data.num_pretrain_classes)[0] for c in cells]
    )
    config_hash = f"{config.fingerprint(data.fingerprint())}/cells/{cells_digest(cells)}"
    return ResultsStore.open(path, config_hash, masks, len(data.test_labels))


def run_sample_retraining(
    config: InfluenceConfig,
    data: TransferData,
    store: ResultsStore,
    on_model_done: Callable[[int, int, int], None] | None = None,
    executor: Executor | None = None,
):
    """Trains the pending rows of a retrain store whose masks mark pretraining
    *images* (every class kept; see :func:`open_retrain_store`), seed ``s`` as
    model ``RETRAIN_INDEX_BASE + s``, so rows of one seed pair up."""
    seeds = np.asarray(store.spec["meta"]["seeds"], dtype=np.int64)
    every_class = np.ones(data.num_pretrain_classes, dtype=bool)
    masks = store.masks

    def job(row):
        index = RETRAIN_INDEX_BASE + int(seeds[row])
        return ModelJob(row, config, index, every_class, masks[row])

    return _train_pending(store, job, data, on_model_done, executor)
