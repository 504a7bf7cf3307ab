"""Copies that are not byte-identical: search with test-time augmentation, then verify.

A leaked test image usually comes back re-encoded, rescaled, cropped, shifted,
re-contrasted or slightly rotated. A classifier's features blur such a copy
into "another image of the same thing", so pixels decide here:

1. every image becomes a grey thumbnail (``THUMB`` x ``THUMB``);
2. *search*: each target thumbnail, and its versions under a small set of
   transformations (the named ``AUGMENTATIONS``), is looked up in a FAISS
   index of coarse, blurred, per-image normalised pretraining signatures;
   the union of the nearest few is the target's candidate set;
3. *verify*: each candidate is compared with the target under a finer grid
   of transformations (crop or shrink x shift, rotations) by normalised
   cross-correlation (NCC, in [-1, 1]; a linear change of contrast leaves
   it unchanged) at thumbnail resolution; the best one is kept, and a near
   match (``REFINE_FROM``) is refined by a local search between grid points.

A target whose best NCC reaches the verification threshold is matched. The
transformation that aligned it is reported, so a user sees *how* it was
copied.
"""

import functools
import itertools

import numpy as np
from scipy import ndimage, sparse

from .checks import check_int, check_number
from .neighbors import NeighborIndex

THUMB = 32  # verification resolution
SEARCH_EXACT_MAX = 20_000  # pretraining images searched exactly; IVF beyond
_SEARCH = 16  # search-signature resolution (blurred: tolerant to small misalignment)

_SHIFTS = [(dy, dx) for dy in (-2, -1, 0, 1, 2) for dx in (-2, -1, 0, 1, 2) if (dy, dx) != (0, 0)]
_ANGLES = (-16, -12, -8, -4, 4, 8, 12, 16)
_ZOOMS = (1.05, 1.1, 1.15, 1.2, 1.25)  # crops of 95% down to 80% of the side, resized back
_SHRINKS = (0.95, 0.9, 0.85, 0.8)  # the image resized down onto a blank canvas of its size

# name -> (search grid, verification grid); each grid a list of
# (label, zoom, angle in degrees, shift (dy, dx) in pixels)
_IDENTITY = [("identity", 1.0, 0.0, (0, 0))]


def _grid(shifts=(), angles=(), zooms=(), zoom_shifts=(), shrinks=(), shrink_shifts=()):
    out = list(_IDENTITY)
    out += [(f"shift {dy:+d},{dx:+d}", 1.0, 0.0, (dy, dx)) for dy, dx in shifts]
    out += [(f"rotate {a:+d}", 1.0, float(a), (0, 0)) for a in angles]
    for name, factors, moves in (("crop", zooms, zoom_shifts), ("shrink", shrinks, shrink_shifts)):
        for z in factors:
            out.append((f"{name} x{z:g}", z, 0.0, (0, 0)))
            out += [(f"{name} x{z:g} shift {dy:+d},{dx:+d}", z, 0.0, (dy, dx)) for dy, dx in moves]
    return out


_ZOOM_SHIFTS = [s for s in itertools.product(range(-3, 4), repeat=2) if s != (0, 0)]
# a shrunk copy sits near the canvas centre: smaller offsets suffice
_SHRINK_SHIFTS = [s for s in itertools.product(range(-2, 3), repeat=2) if s != (0, 0)]
AUGMENTATIONS = {
    "none": (_IDENTITY, _IDENTITY),
    "shifts": (_grid(shifts=_SHIFTS[::2]), _grid(shifts=_SHIFTS)),
    "standard": (
        _grid(shifts=_SHIFTS[::2], angles=_ANGLES, zooms=_ZOOMS, shrinks=_SHRINKS[1::2]),
        _grid(
            shifts=_SHIFTS,
            angles=_ANGLES,
            zooms=_ZOOMS,
            zoom_shifts=_ZOOM_SHIFTS,
            shrinks=_SHRINKS,
            shrink_shifts=_SHRINK_SHIFTS,
        ),
    ),
}


def check_augmentations(name):
    if not isinstance(name, str) or name not in AUGMENTATIONS:
        raise ValueError(f"augmentations must be one of {sorted(AUGMENTATIONS)}; got {name!r}")
    return AUGMENTATIONS[name]


def thumbnails(images):
    """``(N, THUMB, THUMB)`` float32 grey thumbnails of uint8 ``(N, THUMB, THUMB)`` arrays."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (THUMB, THUMB):
        raise ValueError(f"thumbnails must be (N, {THUMB}, {THUMB}); got shape {x.shape}")
    return x


_PIXELS = np.stack(np.meshgrid(np.arange(THUMB), np.arange(THUMB), indexing="ij"), -1).reshape(
    -1, 2
)


def _source_coords(zoom, angle, shift):
    """Where each output pixel of the warp (zoom in about the centre, rotate by
    ``angle`` degrees, shift by ``shift`` pixels) reads the input: ``(THUMB**2, 2)``
    as (row, col). Array arguments give one warp per entry: ``(P, THUMB**2, 2)``."""
    zoom, a = np.asarray(zoom, float), np.deg2rad(np.asarray(angle, float))
    shift = np.asarray(shift, float)
    cos, sin = (np.cos(a) / zoom)[..., None], (np.sin(a) / zoom)[..., None]
    c = (THUMB - 1) / 2.0
    dy = _PIXELS[:, 0] - c - shift[..., 0, None]
    dx = _PIXELS[:, 1] - c - shift[..., 1, None]
    return np.stack([cos * dy + sin * dx + c, cos * dx - sin * dy + c], axis=-1)


def _bilinear_taps(src):
    """Bilinear sampling at ``src`` (``(..., 2)`` as (row, col)): the four flat
    pixel indices and weights of each point, ``(4, ...)`` each; zero weight
    outside the image."""
    base = np.floor(src).astype(np.int64)
    frac = src - base
    idx, weights = [], []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        y, x = base[..., 0] + dy, base[..., 1] + dx
        w = (frac[..., 0] if dy else 1 - frac[..., 0]) * (frac[..., 1] if dx else 1 - frac[..., 1])
        inside = (y >= 0) & (y < THUMB) & (x >= 0) & (x < THUMB)
        idx.append(np.where(inside, y * THUMB + x, 0))
        weights.append(np.where(inside, w, 0.0))
    return np.stack(idx), np.stack(weights)


@functools.lru_cache(maxsize=1024)
def _warp_matrix(zoom, angle, shift):
    """The bilinear warp of :func:`_source_coords` (zeros outside) as a sparse
    ``(THUMB**2, THUMB**2)`` matrix acting on flattened thumbnails: one matrix
    product per batch."""
    idx, weights = _bilinear_taps(_source_coords(zoom, angle, shift))
    n = THUMB * THUMB
    rows = np.broadcast_to(np.arange(n), idx.shape)
    matrix = sparse.csr_matrix((weights.ravel(), (rows.ravel(), idx.ravel())), shape=(n, n))
    matrix.eliminate_zeros()
    return matrix.astype(np.float32)


def transform(flat, zoom, angle, shift):
    """Flattened thumbnails ``(N, THUMB**2)`` under one transformation."""
    if zoom == 1.0 and angle == 0.0 and tuple(shift) == (0, 0):
        return flat
    return np.asarray((_warp_matrix(zoom, angle, tuple(shift)) @ flat.T).T)


def _normalised(x):
    """Rows centred and scaled to unit norm; a flat image (no contrast) becomes 0."""
    flat = x.reshape(len(x), -1).astype(np.float32)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.divide(flat, norm, out=np.zeros_like(flat), where=norm > 1e-6)


@functools.lru_cache(maxsize=2)
def _linear_filter(sigma, factor):
    """Gaussian blur then ``factor`` x ``factor`` averaging, as a dense matrix."""
    eye = np.eye(THUMB * THUMB, dtype=np.float32).reshape(-1, THUMB, THUMB)
    blurred = ndimage.gaussian_filter(eye, sigma=(0, sigma, sigma), mode="constant")
    s = THUMB // factor
    small = blurred.reshape(-1, s, factor, s, factor).mean(axis=(2, 4))
    return small.reshape(THUMB * THUMB, -1)  # (THUMB**2, s**2): flat @ it


def _signatures(flat):
    """Coarse, blurred search signatures (``_SEARCH`` squared values per image)."""
    sig = _normalised(flat @ _linear_filter(1.0, THUMB // _SEARCH))
    sig[np.linalg.norm(sig, axis=1) == 0, 0] = 1.0  # flat images: a harmless unit vector
    return sig


def _light_blur(flat):
    # absorbs JPEG blocks and resampling noise; applied before warping (the two
    # nearly commute for these small warps) so that each image is blurred once
    return flat @ _linear_filter(0.6, 1)


class Matches(dict):
    """Per target: ``ncc`` (best verified NCC, -1 without candidates),
    ``index`` (the matched pretraining row, -1 if none), ``transform`` (label)
    and ``mutual`` (see :func:`mutual_best`)."""


def match_copies(
    pretrain_thumbs,
    target_thumbs,
    augmentations="standard",
    candidates=4,
    extra_candidates=None,
    device="auto",
    batch=256,
    exclude_self=False,
    link_threshold=None,
):
    """The best-aligned pretraining copy of every target thumbnail.

    Args:
        pretrain_thumbs, target_thumbs: uint8 or float ``(N, THUMB, THUMB)``
        augmentations: a name in ``AUGMENTATIONS``
        candidates: nearest pretraining rows kept per search transformation
        extra_candidates: optional ``(Q, k)`` pretraining rows to verify too
            (for example the nearest neighbours in another embedding)
        device: for FAISS
        exclude_self: the targets are the pretraining images themselves (a
            search for duplicates within one set): a row never matches itself
        link_threshold: also return ``pairs``, every (target, pretraining)
            row pair whose verified NCC reaches it (not only the best one:
            several copies of one source then all link to each other)

    Returns:
        a :class:`Matches` of arrays ``ncc`` (float64), ``index`` (int64)
        and ``transform`` (list of str), one entry per target; ``pairs``
        (``(P, 2)`` int64) with ``link_threshold``
    """
    search_grid, verify_grid = check_augmentations(augmentations)
    candidates = check_int(candidates, "candidates", 1)
    pre, tgt = thumbnails(pretrain_thumbs), thumbnails(target_thumbs)
    if len(pre) == 0 or len(tgt) == 0:
        raise ValueError("match_copies needs pretraining and target thumbnails")
    pre, tgt = pre.reshape(len(pre), -1), tgt.reshape(len(tgt), -1)
    # the search only proposes candidates (verification decides): exact while
    # cheap, IVF beyond (exact costs pretraining x targets x search grid)
    kind = "flat" if len(pre) <= SEARCH_EXACT_MAX else "ivf"
    index = NeighborIndex(_signatures(pre), kind=kind, device=device, center=False)
    # half precision: 2 KB per pretraining image (NCC needs no more than 3 digits)
    pre_verify = _normalised(_light_blur(pre)).astype(np.float16)
    out = Matches(
        ncc=np.full(len(tgt), -1.0),
        index=np.full(len(tgt), -1, dtype=np.int64),
        transform=[""] * len(tgt),
    )
    links = []
    refine_axes = _spanned_axes(verify_grid)
    for start in range(0, len(tgt), batch):
        rows = slice(start, min(start + batch, len(tgt)))
        views = np.concatenate([transform(tgt[rows], z, a, s) for _, z, a, s in search_grid])
        _, near = index.search(_signatures(views), candidates, prepared=True)  # one call
        n_rows = rows.stop - rows.start
        found = [near.reshape(len(search_grid), n_rows, -1).transpose(1, 0, 2).reshape(n_rows, -1)]
        if extra_candidates is not None:
            found.append(np.asarray(extra_candidates)[rows])
        cands = np.concatenate(found, axis=1)
        if exclude_self:
            cands[cands == np.arange(rows.start, rows.stop)[:, None]] = -1
        cands = _distinct(cands)
        per_candidate = _verify(
            _light_blur(tgt[rows]), cands, pre_verify, verify_grid, refine_axes, out, start
        )
        if link_threshold is not None:
            q, c = np.nonzero(per_candidate >= link_threshold)
            links.append(np.stack([q + start, cands[q, c]], axis=1))
    out["mutual"] = mutual_best(out["ncc"], out["index"])
    if link_threshold is not None:
        out["pairs"] = np.concatenate(links).astype(np.int64)
    return out


def _distinct(cands):
    """Each row's distinct non-negative entries, padded with -1, as few columns as needed."""
    rows = np.sort(cands, axis=1)
    repeat = np.zeros_like(rows, dtype=bool)
    repeat[:, 1:] = rows[:, 1:] == rows[:, :-1]
    rows[repeat] = -1
    rows = -np.sort(-rows, axis=1)  # the distinct ones first
    width = max(1, int((rows >= 0).sum(axis=1).max()))
    return rows[:, :width]


def _verify(tgt, cands, pre_verify, grid, refine_axes, out, start):
    """Best NCC of each target, over its candidates and the grid's
    transformations (near matches refined along ``refine_axes``), into
    ``out``; returns each candidate's best ``(B, C)``."""
    valid = cands >= 0
    gathered = pre_verify[np.where(valid, cands, 0)].astype(np.float32)  # (B, C, D)
    per_candidate = np.full(cands.shape, -np.inf, dtype=np.float32)
    best = np.full(cands.shape[0], -np.inf, dtype=np.float32)
    best_c = np.zeros(cands.shape[0], dtype=np.int64)
    best_t = np.zeros(cands.shape[0], dtype=np.int64)
    for t, (_, z, a, s) in enumerate(grid):
        view = _normalised(transform(tgt, z, a, s))  # (B, D)
        ncc = np.matmul(gathered, view[:, :, None])[:, :, 0]
        ncc[~valid] = -np.inf
        np.maximum(per_candidate, ncc, out=per_candidate)
        c = np.argmax(ncc, axis=1)
        value = ncc[np.arange(len(c)), c]
        better = value > best
        best[better], best_c[better], best_t[better] = value[better], c[better], t
    for q in np.flatnonzero(best >= REFINE_FROM) if refine_axes.any() else ():
        c = best_c[q]
        _, z, a, sh = grid[best_t[q]]
        value = _refine(tgt[q], gathered[q, c], z, a, sh, refine_axes)
        per_candidate[q, c] = best[q] = max(best[q], value)
    found = np.isfinite(best)
    for q in np.flatnonzero(found):
        out["ncc"][start + q] = float(best[q])
        out["index"][start + q] = int(cands[q, best_c[q]])
        out["transform"][start + q] = grid[best_t[q]][0]
    return per_candidate


# a near match is refined between the grid's points: copies rarely sit on it
# (a shrink to 27 of 32 pixels is zoom 0.84, half a pixel off the centre)
REFINE_FROM = 0.9
_STEPS = np.array([0.05, 4.0, 1.0, 1.0])  # the grid's spacing: zoom, angle, dy, dx


def _spanned_axes(grid):
    """Which of zoom, angle, dy, dx a grid varies: a refinement stays within
    the transformations its augmentation set names ("none" refines nothing)."""
    params = np.array([(z, a, *s) for _, z, a, s in grid], dtype=np.float64)
    return params.max(axis=0) > params.min(axis=0)


def _refine(img, pre_vec, zoom, angle, shift, axes, rounds=(0.5, 0.5, 0.25, 0.25)):
    """Best NCC of one target against one candidate near a grid transformation:
    a pattern search (each round moves one of the ``axes`` among zoom, angle,
    dy, dx by the round's fraction of the grid's spacing, or stays)."""
    eye = np.eye(4)[axes]
    moves = np.concatenate([np.zeros((1, 4)), eye, -eye])
    params = np.array([zoom, angle, *shift], dtype=np.float64)
    best = -np.inf
    for step in rounds:
        trial = params + moves * (_STEPS * step)
        idx, weights = _bilinear_taps(_source_coords(trial[:, 0], trial[:, 1], trial[:, 2:]))
        ncc = _normalised((img[idx] * weights).sum(axis=0)) @ pre_vec
        k = int(np.argmax(ncc))
        best, params = max(best, float(ncc[k])), trial[k]
    return best


def mutual_best(ncc, index):
    """Whether each target is the best match of the pretraining image it matched.

    Natural near-duplicates exist among targets (two scans of a "1" by one
    writer): a copy of one then matches the others nearly as well. Among the
    targets that matched the same pretraining image only the closest keeps
    it, so one copy makes one leak (a target set with exact duplicates of
    its own loses all but one of them here; byte- and pixel-identical copies
    are found apart from this).
    """
    ncc, index = np.asarray(ncc, np.float64), np.asarray(index)
    order = np.lexsort((np.arange(len(ncc)), -ncc))  # best first, ties by position
    best = np.zeros(len(ncc), dtype=bool)
    seen = set()
    for q in order:
        if index[q] >= 0 and index[q] not in seen:
            seen.add(int(index[q]))
            best[q] = True
    return best


def match_closeness(matches, match_threshold, threshold):
    """Pixel evidence as a closeness in [0, 1]: linear in NCC, equal to
    ``threshold`` (the tagging score) at ``match_threshold`` and 1 at NCC 1;
    0 for a target that is not its match's best (:func:`mutual_best`)."""
    check_match_threshold(match_threshold)
    floor = (match_threshold - threshold) / (1.0 - threshold) if threshold < 1 else match_threshold
    span = 1.0 - floor
    value = np.clip((np.asarray(matches["ncc"], np.float64) - floor) / span, 0.0, 1.0)
    return np.where(matches["mutual"], value, 0.0)


def check_match_threshold(value):
    return check_number(value, "match_threshold", 0, 1, low_open=True, high_open=True)
