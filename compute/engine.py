"""Runs the subset models that a results store still lacks."""

import hashlib
import os

import numpy as np
import torch

from .nets import build_network
from .store import ResultsStore
from .subsets import check_design, sample_class_masks
from .train import pretrain_network, resolve_device, train_subset_model


def design_masks(config, num_classes, class_names=None):
    """The run's class masks, refused if some class is not in and out enough."""
    masks = sample_class_masks(config.num_models, num_classes, config.alpha, config.seed)
    check_design(masks, class_names)
    return masks


def open_store(path, config, data, class_names=None, meta=None):
    """The store for (config, data) at ``path``: new, or resumed if it matches."""
    masks = design_masks(config, data.num_pretrain_classes, class_names)
    config_hash = config.fingerprint(data.fingerprint())
    return ResultsStore.open(path, config_hash, masks, len(data.test_labels), meta=meta)


def run_subset_models(config, data, store, on_model_done=None, model_indices=None):
    """Trains every model whose row is not complete, writing each as it ends.

    Args:
        on_model_done: optional ``callable(index, num_done, num_total)``
        model_indices: optional ``(M,)`` model index (hence seed) of each row;
            by default row ``i`` is model ``i``

    Returns:
        the indices trained in this call (finished rows are never retrained)
    """
    masks = store.masks
    total = len(masks)
    pending = store.pending()
    done = total - len(pending)
    for index in pending:
        model = index if model_indices is None else int(model_indices[index])
        outputs = train_subset_model(config, model, masks[index], data)
        store.write(index, outputs)
        done += 1
        if on_model_done is not None:
            on_model_done(index, done, total)
    return pending


# Retraining indices live far from the subset models' 0..M-1, so a retrained
# model never shares a seed with an influence model.
RETRAIN_INDEX_BASE = 1_000_000


def open_retrain_store(path, config, data, masks, seeds, meta=None):
    """A resumable store for retrained models, one row per ``(mask, seed)``.

    Seed ``s`` trains as model ``RETRAIN_INDEX_BASE + s`` whatever its
    mask, so rows that share a seed pair up (same initialisation and data
    order, only the classes differ).
    """
    masks = np.asarray(masks, dtype=bool)
    seeds = np.asarray(seeds, dtype=np.int64)
    if masks.ndim != 2 or seeds.shape != (len(masks),):
        raise ValueError(f"need (R, C) masks and (R,) seeds; got {masks.shape} and {seeds.shape}")
    rows_hash = hashlib.sha256(masks.tobytes() + seeds.tobytes()).hexdigest()[:16]
    config_hash = f"{config.fingerprint(data.fingerprint())}/retrain/{rows_hash}"
    meta = dict(meta or {}, seeds=seeds.tolist())
    return ResultsStore.open(path, config_hash, masks, len(data.test_labels), meta=meta)


def run_retraining(config, data, store, on_model_done=None):
    """Trains the rows of a retrain store that are not complete (resumable)."""
    seeds = np.asarray(store.spec["meta"]["seeds"], dtype=np.int64)
    return run_subset_models(config, data, store, on_model_done,
                             model_indices=RETRAIN_INDEX_BASE + seeds)


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
        net = build_network(config.arch, data.num_pretrain_classes, config.channels, config.width)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.to(device).to(memory_format=torch.channels_last), device
    everything = np.ones(data.num_pretrain_classes, dtype=bool)
    net, _, device = pretrain_network(config, BACKBONE_INDEX, everything, data)
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp"
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
    return net, device
