"""Pixel matching of transformed copies (compute.matching), on real digit scans."""

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from sklearn.datasets import load_digits
from transferscope.compute import matching as mt


@pytest.fixture(scope="module")
def scans():
    """sklearn's 8x8 digit scans upscaled to 32x32 (natural near-duplicates among them)."""
    d = load_digits()
    small = (d.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    return np.stack(
        [np.asarray(Image.fromarray(s).resize((32, 32), Image.BILINEAR)) for s in small]
    )


def _copy(img, kind, rng):
    pil = Image.fromarray(img)
    if kind == "rotation":
        return np.asarray(pil.rotate(float(rng.choice([-11, 9])), resample=Image.BILINEAR))
    if kind == "crop":
        side = 27
        x0, y0 = rng.integers(0, 32 - side + 1, size=2)
        return np.asarray(pil.crop((x0, y0, x0 + side, y0 + side)).resize((32, 32), Image.BILINEAR))
    if kind == "shrink":  # resized down, pasted near the middle of a blank canvas
        side = int(rng.integers(26, 30))
        canvas = Image.new("L", (32, 32), 0)
        offset = (32 - side) // 2 + int(rng.integers(-1, 2))
        canvas.paste(pil.resize((side, side), Image.BILINEAR), (offset, offset))
        return np.asarray(canvas)
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=25)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))


def _strokes(n, rng):
    """Images of random pen strokes: a pretraining set without natural
    near-duplicates of the scans (another scan of a "1" would be one)."""
    out = []
    for _ in range(n):
        img = Image.new("L", (32, 32), 0)
        draw = ImageDraw.Draw(img)
        points = [tuple(int(v) for v in rng.integers(4, 28, size=2)) for _ in range(4)]
        draw.line(points, fill=int(rng.integers(150, 256)), width=int(rng.integers(2, 5)))
        out.append(np.asarray(img.filter(ImageFilter.GaussianBlur(1))))
    return np.stack(out)


@pytest.fixture(scope="module")
def planted(scans):
    """300 target scans; a pretraining set of 400 stroke images plus one
    transformed copy of each of 32 targets (8 per kind)."""
    rng = np.random.default_rng(0)
    targets, others = scans[rng.permutation(len(scans))[:300]], _strokes(400, rng)
    copied = rng.choice(300, 32, replace=False)
    kinds = np.repeat(["rotation", "crop", "jpeg", "shrink"], 8)
    copies = np.stack([_copy(targets[t], k, rng) for t, k in zip(copied, kinds)])
    pretrain = np.concatenate([others, copies])
    source_row = dict(zip(copied.tolist(), range(len(others), len(pretrain))))
    return pretrain, targets, source_row, kinds, copied


def _flagged(matches, threshold=0.97):
    return (matches["ncc"] >= threshold) & matches["mutual"]


def test_transformed_copies_are_matched_to_their_copy_and_others_are_not(planted):
    pretrain, targets, source_row, kinds, copied = planted
    m = mt.match_copies(pretrain, targets, "standard", device="cpu")
    flagged = _flagged(m)
    for kind in ("rotation", "crop", "jpeg", "shrink"):
        rows = copied[kinds == kind]
        assert flagged[rows].mean() >= 7 / 8, (kind, m["ncc"][rows])
    found = np.flatnonzero(flagged)
    assert all(m["index"][t] == source_row[t] for t in found if t in source_row)
    false = [t for t in found if t not in source_row]
    assert len(false) <= 1, m["ncc"][false]
    for kind, label in (("rotation", "rotate"), ("shrink", "shrink")):
        aligned = [t for t, k in zip(copied, kinds) if k == kind and flagged[t]]
        assert all(m["transform"][t].startswith(label) for t in aligned), kind


def test_without_transformations_rotated_and_cropped_copies_are_missed(planted):
    # what the augmentations contribute: with identity only, the same cut
    # misses most rotated and cropped copies that "standard" finds
    pretrain, targets, _, kinds, copied = planted
    plain = _flagged(mt.match_copies(pretrain, targets, "none", device="cpu"))
    moved = copied[kinds != "jpeg"]
    assert plain[moved].mean() <= 0.5
    assert plain[copied[kinds == "jpeg"]].all()  # re-encoding needs no alignment


def test_only_the_best_target_keeps_a_shared_match():
    ncc = np.array([0.99, 0.995, 0.98, 0.5])
    index = np.array([7, 7, 3, -1])
    assert mt.mutual_best(ncc, index).tolist() == [False, True, True, False]
    ties = mt.mutual_best(np.array([0.9, 0.9]), np.array([1, 1]))
    assert ties.tolist() == [True, False]  # the first of equals, deterministically


def test_match_closeness_reaches_the_tagging_score_at_the_match_threshold():
    matches = {
        "ncc": np.array([1.0, 0.97, 0.955, 0.9, 0.99]),
        "mutual": np.array([1, 1, 1, 1, 0], bool),
    }
    c = mt.match_closeness(matches, 0.97, 0.5)
    assert c[:4] == pytest.approx([1.0, 0.5, 0.25, 0.0])
    assert c[4] == 0.0  # not its match's best


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p, t: mt.match_copies(p, t, "sharpen"), "augmentations must be one of"),
        (lambda p, t: mt.match_copies(p, t, candidates=0), "candidates must be a positive"),
        (lambda p, t: mt.match_copies(p[:, :16], t), r"thumbnails must be \(N, 32, 32\)"),
        (lambda p, t: mt.match_copies(p[:0], t), "needs pretraining and target thumbnails"),
        (
            lambda p, t: mt.match_closeness({"ncc": [1], "mutual": [True]}, 1.0, 0.5),
            r"match_threshold must be a finite number in \(0, 1\)",
        ),
    ],
)
def test_bad_input_is_refused_by_name(planted, call, message):
    pretrain, targets, *_ = planted
    with pytest.raises(ValueError, match=message):
        call(pretrain, targets[:5])


def test_a_copy_between_grid_points_is_refined_along_its_sets_axes_only(scans, monkeypatch):
    # a scan shrunk to zoom 0.825 and half a pixel off: between the grid's points
    target = scans[:1]
    flat = mt._light_blur(target.reshape(1, -1).astype(np.float32))
    copy = mt.transform(flat, 0.825, 0.0, (0.5, -0.5)).reshape(1, 32, 32)
    refined = mt.match_copies(copy, target, "standard", device="cpu")["ncc"][0]
    monkeypatch.setattr(mt, "REFINE_FROM", 2.0)  # refinement off
    on_grid = mt.match_copies(copy, target, "standard", device="cpu")["ncc"][0]
    assert refined > on_grid + 0.005 and refined >= 0.99, (refined, on_grid)
    monkeypatch.setattr(mt, "REFINE_FROM", 0.0)  # refine everything: "none" still moves nothing
    plain = mt.match_copies(copy, target, "none", device="cpu")["ncc"][0]
    monkeypatch.setattr(mt, "REFINE_FROM", 2.0)
    assert plain == mt.match_copies(copy, target, "none", device="cpu")["ncc"][0]


def test_past_the_exact_search_limit_ivf_candidates_find_the_same_copies(planted, monkeypatch):
    pretrain, targets, *_ = planted
    exact = _flagged(mt.match_copies(pretrain, targets, "standard", device="cpu"))
    monkeypatch.setattr(mt, "SEARCH_EXACT_MAX", 100)  # the 432 pretraining images go to IVF
    kinds, index_class = [], mt.NeighborIndex

    def recording(*args, **kwargs):
        kinds.append(kwargs["kind"])
        return index_class(*args, **kwargs)

    monkeypatch.setattr(mt, "NeighborIndex", recording)
    approximate = _flagged(mt.match_copies(pretrain, targets, "standard", device="cpu"))
    assert kinds == ["ivf"]
    assert exact.sum() >= 30 and (approximate == exact).all()
