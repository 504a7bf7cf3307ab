"""Class-subset design: which pretraining classes each model sees."""

import numpy as np

# Fewer than this many models with (or without) a class leave its standard
# error undefined.
MIN_MODELS_PER_SIDE = 2


def sample_class_masks(num_models, num_classes, alpha=0.5, seed=0):
    """Returns an ``(num_models, num_classes)`` boolean mask of class subsets.

    Every row holds ``round(alpha * num_classes)`` classes. Rows are drawn
    greedily from the classes used least so far (ties broken at random), so
    each class is in ``alpha * num_models`` subsets up to one. With
    ``alpha = 0.5`` this yields complementary pairs: model ``2i + 1`` sees
    exactly the classes model ``2i`` did not, which balances the design.

    Deterministic in ``seed``.
    """
    if num_classes < 2:
        raise ValueError(
            f"need at least 2 pretraining classes; got {num_classes}"
        )
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha!r}")
    k = int(round(alpha * num_classes))
    k = min(max(k, 1), num_classes - 1)
    rng = np.random.default_rng(seed)
    counts = np.zeros(num_classes, dtype=np.int64)
    masks = np.zeros((num_models, num_classes), dtype=bool)
    for m in range(num_models):
        # lexsort: primary key counts, ties by a fresh random permutation
        order = np.lexsort((rng.permutation(num_classes), counts))
        chosen = order[:k]
        masks[m, chosen] = True
        counts[chosen] += 1
    return masks


def check_design(masks, class_names=None):
    """Raises if some class is not both in and out of enough subsets."""
    n_in = masks.sum(axis=0)
    n_out = masks.shape[0] - n_in
    bad = np.flatnonzero(
        (n_in < MIN_MODELS_PER_SIDE) | (n_out < MIN_MODELS_PER_SIDE)
    )
    if len(bad):
        names = [class_names[i] if class_names else str(i) for i in bad[:5]]
        raise ValueError(
            f"too few models: every class must be in at least "
            f"{MIN_MODELS_PER_SIDE} subsets and out of at least "
            f"{MIN_MODELS_PER_SIDE}, but {len(bad)} class(es) are not "
            f"(e.g. {names}); increase num_models (M={masks.shape[0]})"
        )


def min_models(alpha):
    """The smallest number of models that passes :func:`check_design`."""
    side = min(alpha, 1 - alpha)
    return int(np.ceil(MIN_MODELS_PER_SIDE / side))
