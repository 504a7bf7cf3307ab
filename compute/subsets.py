"""Class-subset designs: which pretraining classes each model sees.

Four designs (``InfluenceConfig.design``):

``"orthogonal"`` (the default)
    Rows of a two-level orthogonal array: a Hadamard matrix of order
    ``n >= C + 1`` (Sylvester, or Paley's constructions for other multiples
    of four), randomised from the seed (which columns, a sign per column,
    row order) and folded over: each row is followed by its complement.
    Every class is in exactly half of a block's ``2n`` models, and every two
    classes meet in all four in/out combinations equally often, so the other
    classes' additive effects cancel exactly in a class's difference of
    means (which then equals least squares on the masks), and the foldover
    keeps main effects clear of two-class interactions. The number of
    models is rounded up to whole blocks; with fewer models than ``n``
    (more classes than models, as at ImageNet scale with a few hundred
    models) it falls back to ``"balanced"``.
``"balanced"``
    Random subsets of ``round(alpha * C)`` classes with every class in
    ``alpha * M`` of them (up to one): the greedy least-used fill, then
    randomised by curveball swaps, which keep every row's and column's sum.
``"independent"``
    The paper's: each model an independent uniformly random subset of
    ``round(alpha * C)`` classes.
``"pairs"``
    Complementary pairs (model ``2i + 1`` sees exactly the classes model
    ``2i`` did not): the design of transferscope before 0.2, kept so its
    stores stay valid.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from scipy import linalg

from .checks import check_number

if TYPE_CHECKING:  # names in annotations only
    from collections.abc import Sequence

DESIGNS = ("orthogonal", "balanced", "independent", "pairs")
# Fewer than this many models with (or without) a class leave its standard
# error undefined.
MIN_MODELS_PER_SIDE = 2
# the sign flips tried per orthogonal block, keeping the one whose subsets
# are closest to half the classes (a model with almost no classes trains badly)
_SIGN_TRIALS = 32


@dataclasses.dataclass(frozen=True)
class Design:
    """The class masks of a run and how they were built.

    Attributes:
        masks: ``(M, C)`` bool, class ``c`` in model ``m``'s subset
        name: the design used (``"orthogonal"`` may fall back to ``"balanced"``)
        requested: the design asked for
        block_size: rows of one self-contained unit: a folded orthogonal
            block (``2n``), a complementary pair (2), or 1 (any row)
        num_requested: the number of models asked for
        note: why ``M`` or the design differ from what was asked, or ``""``
    """

    masks: np.ndarray
    name: str
    requested: str
    block_size: int
    num_requested: int
    note: str = ""

    @property
    def num_models(self):
        return int(self.masks.shape[0])

    def groups(self):
        """``(M,)`` unit index of each row (block, pair, or row)."""
        return np.arange(self.num_models) // self.block_size

    def describe(self):
        return {
            "design": self.name,
            "design_requested": self.requested,
            "block_size": self.block_size,
            "num_models": self.num_models,
            "num_models_requested": self.num_requested,
            "design_note": self.note,
        }


def _balanced_fallback(num_models, num_classes, seed, requested, note):
    """The "balanced" design used where no orthogonal block fits (``note`` says why)."""
    masks = balanced_masks(num_models, num_classes, 0.5, seed)
    return Design(masks, "balanced", requested, 1, num_models, note)


def make_design(
    design: str,
    num_models: int,
    num_classes: int,
    alpha: float = 0.5,
    seed: int = 0,
    max_models: int | None = None,
):
    """The :class:`Design` of ``num_models`` subsets of ``num_classes`` classes.

    Deterministic in its arguments. Raises ``ValueError`` naming the problem
    (unknown design, too few classes, an ``alpha`` the design cannot take,
    whole blocks that would exceed ``max_models``), before building anything.
    """
    if design not in DESIGNS:
        raise ValueError(f"design must be one of {DESIGNS}; got {design!r}")
    if num_classes < 2:
        raise ValueError(f"need at least 2 pretraining classes; got {num_classes}")
    check_number(alpha, "alpha", 0, 1, low_open=True, high_open=True)
    if design == "orthogonal":
        if alpha != 0.5:
            raise ValueError(
                f"design 'orthogonal' puts every class in exactly half the models "
                f"(alpha 0.5); got alpha={alpha!r}: use design='balanced' or "
                f"'independent' for another alpha"
            )
        order = hadamard_order(num_classes + 1)
        if num_models >= order:
            blocks = -(-num_models // (2 * order))
            if max_models is not None and blocks * 2 * order > max_models:
                raise ValueError(
                    f"no whole number of orthogonal blocks fits: {num_models} models round "
                    f"up to {blocks * 2 * order} ({2 * order} per block for {num_classes} "
                    f"classes), more than the {max_models} allowed; ask for at most "
                    f"{(max_models // (2 * order)) * 2 * order}"
                )
            masks = np.concatenate(
                [_orthogonal_block(order, num_classes, [seed, b]) for b in range(blocks)]
            )
            if masks.all(axis=1).any():  # only for a handful of classes: see below
                note = (
                    f"no orthogonal array found for {num_classes} classes without a model "
                    f"that sees every class (its complement would see none); using the "
                    f"'balanced' random design"
                )
                return _balanced_fallback(num_models, num_classes, seed, design, note)
            note = ""
            if len(masks) != num_models:
                note = (
                    f"{num_models} models rounded up to {len(masks)}: whole folded "
                    f"blocks of a {order}-run orthogonal array for {num_classes} classes"
                )
            return Design(masks, "orthogonal", design, 2 * order, num_models, note)
        note = (
            f"{num_models} models are fewer than one orthogonal block needs for "
            f"{num_classes} classes ({order}, rounded up to {2 * order}); using the "
            f"'balanced' random design (difference of means)"
        )
        return _balanced_fallback(num_models, num_classes, seed, design, note)
    if design == "balanced":
        masks = balanced_masks(num_models, num_classes, alpha, seed)
        return Design(masks, design, design, 1, num_models)
    if design == "independent":
        masks = independent_masks(num_models, num_classes, alpha, seed)
        return Design(masks, design, design, 1, num_models)
    masks = sample_class_masks(num_models, num_classes, alpha, seed)
    pairs = alpha == 0.5 and num_classes % 2 == 0
    return Design(masks, design, design, 2 if pairs else 1, num_models)


# --- orthogonal arrays ----------------------------------------------------------


def hadamard_order(minimum):
    """The smallest order ``>= minimum`` of a Hadamard matrix :func:`hadamard` builds."""
    n = max(4, -(-minimum // 4) * 4)
    while _construction(n) is None:
        n += 4
    return n


def hadamard(n):
    """A Hadamard matrix of order ``n`` (entries +-1, ``H @ H.T == n * I``).

    Sylvester's construction for powers of two, Paley's first (``q + 1``,
    ``q`` a prime ``= 3 mod 4``) and second (``2(q + 1)``, ``q`` a prime
    ``= 1 mod 4``), and their Kronecker products with Sylvester's.
    """
    kind = _construction(n)
    if kind is None:
        raise ValueError(f"no Hadamard construction here for order {n}")
    name, q, doublings = kind
    if name == "sylvester":
        base = linalg.hadamard(q).astype(np.int8)
    elif name == "paley1":
        base = _paley1(q)
    else:
        base = _paley2(q)
    two = np.array([[1, 1], [1, -1]], dtype=np.int8)
    for _ in range(doublings):
        base = np.kron(base, two)
    return base


def _construction(n):
    """``(name, q, doublings)`` of a construction of order ``n``, or None."""
    if n >= 1 and n & (n - 1) == 0:
        return ("sylvester", n, 0)
    doublings = 0
    m = n
    while m % 2 == 0 and m >= 4:
        if m % 4 == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3:
            return ("paley1", m - 1, doublings)
        if m % 4 == 0 and (m // 2 - 1) > 1 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
            return ("paley2", m // 2 - 1, doublings)
        m //= 2
        doublings += 1
    return None


def _is_prime(q):
    if q < 2:
        return False
    return all(q % d for d in range(2, int(q**0.5) + 1))


def _jacobsthal(q):
    """``Q[i, j] = chi(j - i)``, chi the quadratic character mod the prime ``q``."""
    squares = np.zeros(q, dtype=np.int8)
    squares[(np.arange(1, q) ** 2) % q] = 1
    chi = np.where(squares == 1, 1, -1).astype(np.int8)
    chi[0] = 0
    idx = (np.arange(q)[None, :] - np.arange(q)[:, None]) % q
    return chi[idx]


def _paley1(q):
    Q = _jacobsthal(q)
    S = np.zeros((q + 1, q + 1), dtype=np.int8)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = Q
    return S + np.eye(q + 1, dtype=np.int8)


def _paley2(q):
    Q = _jacobsthal(q)
    C = np.zeros((q + 1, q + 1), dtype=np.int8)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = Q
    a = np.array([[1, -1], [-1, -1]], dtype=np.int8)
    b = np.array([[1, 1], [1, -1]], dtype=np.int8)
    return np.kron(C, a) + np.kron(np.eye(q + 1, dtype=np.int8), b)


def _orthogonal_block(order, num_classes, seed):
    """One folded block: ``2 * order`` rows, each followed by its complement."""
    rng = np.random.default_rng(seed)
    H = hadamard(order).astype(np.int16)
    H = H * H[:, :1]  # first column all +1: the others are balanced and orthogonal
    cols = 1 + rng.choice(order - 1, num_classes, replace=False)
    block = H[:, cols]
    half = num_classes // 2
    best, best_spread = None, None
    for _ in range(_SIGN_TRIALS):
        signs = np.ones(num_classes, dtype=np.int16)
        signs[rng.choice(num_classes, half, replace=False)] = -1
        # the sign vector's dot products with the rows have mean square C
        # (Parseval), so subset sizes spread by about sqrt(C)/2 whatever we do
        spread = np.abs((block * signs > 0).sum(axis=1) - num_classes / 2).max()
        if best_spread is None or spread < best_spread:
            best, best_spread = signs, spread
    rows = (block * best)[rng.permutation(order)] > 0
    folded = np.empty((2 * order, num_classes), dtype=bool)
    folded[0::2] = rows
    folded[1::2] = ~rows
    return folded


# --- random designs -------------------------------------------------------------


def sample_class_masks(num_models: int, num_classes: int, alpha: float = 0.5, seed: int = 0):
    """The ``"pairs"`` design: an ``(num_models, num_classes)`` boolean mask.

    Every row holds ``round(alpha * num_classes)`` classes. Rows are drawn
    greedily from the classes used least so far (ties broken at random), so
    each class is in ``alpha * num_models`` subsets up to one. With
    ``alpha = 0.5`` this yields complementary pairs: model ``2i + 1`` sees
    exactly the classes model ``2i`` did not.

    Deterministic in ``seed``.
    """
    if num_classes < 2:
        raise ValueError(f"need at least 2 pretraining classes; got {num_classes}")
    check_number(alpha, "alpha", 0, 1, low_open=True, high_open=True)
    k = _subset_size(num_classes, alpha)
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


def independent_masks(num_models, num_classes, alpha=0.5, seed=0):
    """The paper's design: independent uniformly random subsets of ``round(alpha C)``."""
    k = _subset_size(num_classes, alpha)
    rng = np.random.default_rng([seed, 1])
    keys = rng.random((num_models, num_classes))
    chosen = np.argsort(keys, axis=1)[:, :k]
    masks = np.zeros((num_models, num_classes), dtype=bool)
    np.put_along_axis(masks, chosen, True, axis=1)
    return masks


def balanced_masks(num_models, num_classes, alpha=0.5, seed=0):
    """Random subsets with fixed row sums (``round(alpha C)``) and column sums
    within one of ``alpha M``: the least-used fill, shuffled by curveball swaps."""
    masks = sample_class_masks(num_models, num_classes, alpha, seed)
    rng = np.random.default_rng([seed, 2])
    # curveball: two rows trade a random part of the classes only one of them
    # has; row and column sums stay; ~5 swaps per row mixes well
    for _ in range(5 * num_models if num_models > 1 else 0):
        a, b = rng.choice(num_models, 2, replace=False)
        only_a = np.flatnonzero(masks[a] & ~masks[b])
        only_b = np.flatnonzero(masks[b] & ~masks[a])
        if not len(only_a) or not len(only_b):
            continue
        pool = rng.permutation(np.concatenate([only_a, only_b]))
        masks[a, pool] = False
        masks[b, pool] = False
        masks[a, pool[: len(only_a)]] = True
        masks[b, pool[len(only_a) :]] = True
    return masks


def _subset_size(num_classes, alpha):
    return min(max(int(round(alpha * num_classes)), 1), num_classes - 1)


def check_design(masks: np.ndarray, class_names: Sequence[str] | None = None) -> None:
    """Raises if some class is not both in and out of enough subsets."""
    n_in = masks.sum(axis=0)
    n_out = masks.shape[0] - n_in
    bad = np.flatnonzero((n_in < MIN_MODELS_PER_SIDE) | (n_out < MIN_MODELS_PER_SIDE))
    if len(bad):
        names = [class_names[i] if class_names else str(i) for i in bad[:5]]
        raise ValueError(
            f"too few models: every class must be in at least "
            f"{MIN_MODELS_PER_SIDE} subsets and out of at least "
            f"{MIN_MODELS_PER_SIDE}, but {len(bad)} class(es) are not "
            f"(e.g. {names}); increase num_models (M={masks.shape[0]})"
        )
    empty = np.flatnonzero(~masks.any(axis=1))
    if len(empty):
        raise ValueError(
            f"model(s) {empty[:5].tolist()} would see no class; "
            f"increase alpha or the number of classes"
        )


def min_models(alpha: float):
    """The smallest number of models that passes :func:`check_design` (random designs)."""
    side = min(alpha, 1 - alpha)
    return int(np.ceil(MIN_MODELS_PER_SIDE / side))
