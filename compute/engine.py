"""Runs the subset models that a results store still lacks."""

import numpy as np

from .store import ResultsStore
from .subsets import check_design, sample_class_masks
from .train import train_subset_model


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


def run_subset_models(config, data, store, on_model_done=None):
    """Trains every model whose row is not complete, writing each as it ends.

    Args:
        on_model_done: optional ``callable(index, num_done, num_total)``

    Returns:
        the indices trained in this call (finished rows are never retrained)
    """
    masks = store.masks
    total = len(masks)
    pending = store.pending()
    done = total - len(pending)
    for index in pending:
        outputs = train_subset_model(config, index, masks[index], data)
        store.write(index, outputs)
        done += 1
        if on_model_done is not None:
            on_model_done(index, done, total)
    return pending


# Retraining indices live far from the subset models' 0..M-1, so a retrained
# model never shares a seed with an influence model.
RETRAIN_INDEX_BASE = 1_000_000


def retrain_on_classes(config, data, mask, num_seeds):
    """Trains ``num_seeds`` models on the classes in ``mask`` (same protocol).

    Returns:
        a ``(num_seeds, T)`` dict of outputs, as :func:`train_subset_model`;
        seed ``s`` is the same for every mask, so two calls pair up by seed
    """
    rows = [train_subset_model(config, RETRAIN_INDEX_BASE + s, mask, data)
            for s in range(num_seeds)]
    return {name: np.stack([r[name] for r in rows]) for name in rows[0]}
