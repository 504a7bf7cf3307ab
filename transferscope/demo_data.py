"""Offline demo data: real handwritten digits (target) and rendered glyphs
(pretraining), with a planted harmful class and a planted leak.

Pure numpy/PIL; :mod:`transferscope.demo` turns these arrays into FiftyOne
datasets.

What is planted (and stored as ``PlantedTruth``):

- harmful class ``bold``: the few-shot train split is biased: its scans of
  digits 0-4 come from the heaviest-inked quarter of their class, those of
  5-9 from the lightest quarter (two pens); the test split is unselected.
  ``bold`` holds heavy-stroke glyphs of every character, so pretraining on it
  makes stroke weight a feature; the linear probe then leans on the spurious
  weight-label link of the train split, and light test 0-4s / heavy test
  5-9s go wrong.
- leak: the glyph class ``7`` also holds near-copies (exact, noised,
  shifted, resized, re-contrasted; ten per scan) of the 20 most atypical
  *test* scans of the digit 7, as a web-scraped class would.
- subpopulations: every scan of the digit 9 (train and test) is drawn in one
  of two styles, ``outline`` (hollow strokes) or ``dotted`` (strokes broken
  into dots), alternating; the pretraining set has a class of each style
  (random characters drawn that way). The 9s that the ``outline`` class
  helps most are the outlined ones, and likewise for ``dotted``.
"""

import dataclasses
import glob
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

CANVAS = 32
HARMFUL_CLASS = "bold"
HARMFUL_SIZE = 400
LEAK_DIGIT = 7
LEAK_CLASS = str(LEAK_DIGIT)  # the glyph class that receives the copies
HEAVY_DIGITS = (0, 1, 2, 3, 4)
SUBPOP_DIGIT = 9
SUBPOP_STYLES = ("outline", "dotted")  # also the names of their pretraining classes
SUBPOP_CLASS_SIZE = 200

_SYMBOLS = {
    "plus": "+",
    "equals": "=",
    "percent": "%",
    "ampersand": "&",
    "hash": "#",
    "at": "@",
    "question": "?",
    "exclamation": "!",
    "dollar": "$",
    "star": "*",
    "slash": "/",
    "less": "<",
    "greater": ">",
    "tilde": "~",
}
_LOWER = "abdeghklmnqrtuy"


def glyph_classes():
    """``[(class_name, characters), ...]`` of the rendered glyph classes.

    Digits, upper-case letters, some lower-case letters and symbols; the
    harmful ``bold`` class draws any of these characters with a heavy stroke.
    """
    classes = [(str(d), str(d)) for d in range(10)]
    classes += [(c, c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    classes += [(c, c) for c in _LOWER]
    classes += list(_SYMBOLS.items())
    classes.append((HARMFUL_CLASS, "".join(chars for _, chars in classes)))
    return classes


def font_paths():
    """The TrueType fonts that ship with matplotlib and cover ASCII."""
    import matplotlib

    ttf_dir = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    paths = sorted(glob.glob(os.path.join(ttf_dir, "*.ttf")))
    # symbol-only and size-variant fonts lack letters; LastResort draws boxes
    skip = ("STIXSiz", "STIXNonUni", "cmex", "cmsy", "cmmi", "LastResort", "Display")
    return [p for p in paths if not any(s in os.path.basename(p) for s in skip)]


@dataclasses.dataclass
class PlantedTruth:
    harmful_class: str
    heavy_digits: list
    leak_class: str
    leaked_test_indices: list  # positions in the target test split
    leak_variants: list  # per copy: pretrain_index, test_index and kind
    # the second leak: one transformed copy per scan, in an unrelated class
    transformed_leak_variants: list = dataclasses.field(default_factory=list)
    subpop_digit: int = SUBPOP_DIGIT
    subpop_test_styles: dict = dataclasses.field(default_factory=dict)  # str(test index) -> style

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DemoArrays:
    class_names: list
    pretrain_images: np.ndarray  # (N, 32, 32) uint8
    pretrain_labels: np.ndarray  # (N,) index into class_names
    train_images: np.ndarray  # (n, 32, 32) uint8
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    test_digits_index: np.ndarray  # index of each test image in sklearn digits
    train_digits_index: np.ndarray
    planted: PlantedTruth


def make_demo_arrays(per_class=80, train_per_digit=10, num_leaked=20, copies_per_leak=10, seed=0):
    rng = np.random.default_rng(seed)
    fonts = _load_fonts()

    digits_x, digits_y = _load_digits()
    train_idx, test_idx = _ink_biased_split(digits_x, digits_y, train_per_digit, rng)
    train_images = digits_x[train_idx]
    test_images = digits_x[test_idx]
    test_labels = digits_y[test_idx]

    names, images, labels = [], [], []
    for name, chars in glyph_classes():
        names.append(name)
        cls = len(names) - 1
        bold = name == HARMFUL_CLASS
        for _ in range(HARMFUL_SIZE if bold else per_class):
            ch = chars[rng.integers(len(chars))]
            images.append(_render(ch, fonts, rng, stroke=int(rng.integers(2, 4)) if bold else None))
            labels.append(cls)

    # the leak: near-copies of the most atypical test scans of LEAK_DIGIT (the
    # ones a model gets wrong most often, so a copy in pretraining shows)
    leak_cls = names.index(LEAK_CLASS)
    candidates = np.flatnonzero(test_labels == LEAK_DIGIT)
    flat = test_images[candidates].reshape(len(candidates), -1).astype(np.float64)
    dist = np.linalg.norm(flat - flat.mean(axis=0), axis=1)
    leaked = np.sort(candidates[np.argsort(-dist, kind="stable")[:num_leaked]])
    variants = []
    for t in leaked:
        kinds = np.resize(rng.permutation(_LEAK_KINDS), copies_per_leak)  # each kind, then repeats
        for kind in kinds:
            images.append(_near_copy(test_images[t], kind, rng))
            labels.append(leak_cls)
            variants.append(
                {"pretrain_index": len(images) - 1, "test_index": int(t), "kind": str(kind)}
            )

    # the subpopulations: a stream of its own, so the data above stays as it was
    style_rng = np.random.default_rng([seed, SUBPOP_DIGIT])
    all_chars = "".join(chars for name, chars in glyph_classes() if name != HARMFUL_CLASS)
    for style in SUBPOP_STYLES:
        names.append(style)
        for _ in range(SUBPOP_CLASS_SIZE):
            glyph = _render(all_chars[style_rng.integers(len(all_chars))], fonts, style_rng)
            images.append(_STYLES[style](glyph))
            labels.append(len(names) - 1)
    train_images, _ = _restyle(train_images, digits_y[train_idx])
    test_images, test_styles = _restyle(test_images, test_labels)
    transformed = _plant_transformed_leak(
        test_images, test_labels, leaked, names, images, labels, np.random.default_rng([seed, 2])
    )

    planted = PlantedTruth(
        harmful_class=HARMFUL_CLASS,
        heavy_digits=list(HEAVY_DIGITS),
        leak_class=LEAK_CLASS,
        leaked_test_indices=[int(t) for t in leaked],
        leak_variants=variants,
        transformed_leak_variants=transformed,
        subpop_digit=SUBPOP_DIGIT,
        subpop_test_styles=test_styles,
    )
    return DemoArrays(
        class_names=names,
        pretrain_images=np.stack(images),
        pretrain_labels=np.asarray(labels, dtype=np.int64),
        train_images=train_images,
        train_labels=digits_y[train_idx],
        test_images=test_images,
        test_labels=test_labels,
        test_digits_index=test_idx,
        train_digits_index=train_idx,
        planted=planted,
    )


def _outline(img):
    """Hollow strokes: the morphological gradient (dilation minus erosion)."""
    x = img.astype(np.int32)
    return np.clip(
        ndimage.grey_dilation(x, size=3) - ndimage.grey_erosion(x, size=3), 0, 255
    ).astype(np.uint8)


_yy, _xx = np.mgrid[:CANVAS, :CANVAS]
_DOTS = ((_yy // 2) % 2 == 0) & ((_xx // 2) % 2 == 0)


def _dotted(img):
    """Strokes broken into 2x2 dots on a 4-pixel grid (thickened first, so dots land)."""
    return (ndimage.grey_dilation(img, size=3) * _DOTS).astype(np.uint8)


_STYLES = {"outline": _outline, "dotted": _dotted}


def _restyle(images, labels):
    """The SUBPOP_DIGIT images drawn in the two styles, alternating.

    Returns ``(images, {str(index): style})`` (string keys: stored as JSON)."""
    images = images.copy()
    styles = {}
    for j, i in enumerate(np.flatnonzero(labels == SUBPOP_DIGIT)):
        style = SUBPOP_STYLES[j % len(SUBPOP_STYLES)]
        images[i] = _STYLES[style](images[i])
        styles[str(int(i))] = style
    return images, styles


def _load_digits():
    """sklearn's 1,797 8x8 scans, upscaled to 32x32, white ink on black."""
    from sklearn.datasets import load_digits

    d = load_digits()
    small = (d.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    big = np.stack(
        [np.asarray(Image.fromarray(im).resize((CANVAS, CANVAS), Image.BILINEAR)) for im in small]
    )
    return big, d.target.astype(np.int64)


def _ink_biased_split(images, labels, per_class, rng):
    """Few-shot train split: heavy-inked 0-4s, light-inked 5-9s; the rest is test."""
    ink = images.reshape(len(images), -1).astype(np.float64).sum(axis=1)
    train = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        by_ink = idx[np.argsort(ink[idx], kind="stable")]
        quarter = len(by_ink) // 4
        pool = by_ink[-quarter:] if c in HEAVY_DIGITS else by_ink[:quarter]
        train.extend(rng.choice(pool, size=per_class, replace=False))
    train = np.sort(np.asarray(train))
    test = np.setdiff1d(np.arange(len(labels)), train)
    return train, test


def _load_fonts():
    fonts = font_paths()
    if not fonts:
        raise RuntimeError("no usable TrueType fonts found in matplotlib's mpl-data")
    return fonts


_FONT_CACHE = {}


def _font(path, size):
    key = (path, size)
    if key not in _FONT_CACHE:
        _FONT_CACHE[key] = ImageFont.truetype(path, size)
    return _FONT_CACHE[key]


def _render(ch, fonts, rng, stroke=None):
    """One glyph: random font, size, position, rotation and stroke."""
    for _ in range(20):
        path = fonts[rng.integers(len(fonts))]
        font = _font(path, int(rng.integers(18, 28)))
        if stroke is None:
            stroke = int(rng.integers(0, 2))
        big = Image.new("L", (CANVAS * 2, CANVAS * 2), 0)
        draw = ImageDraw.Draw(big)
        bbox = draw.textbbox((0, 0), ch, font=font, stroke_width=stroke)
        w, h = bbox[2] - bbox[0], bbox[3] - bbox[1]
        if w <= 0 or h <= 0 or _missing_glyph(font, ch):
            continue
        x = CANVAS - w / 2 - bbox[0] + rng.uniform(-4, 4)
        y = CANVAS - h / 2 - bbox[1] + rng.uniform(-4, 4)
        draw.text((x, y), ch, fill=255, font=font, stroke_width=stroke, stroke_fill=255)
        big = big.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR)
        left = CANVAS // 2
        return np.asarray(big.crop((left, left, left + CANVAS, left + CANVAS)))
    raise RuntimeError(f"no font could render {ch!r}")


_MISSING = {}


def _missing_glyph(font, ch):
    """True when the font draws its 'missing glyph' box for ``ch``."""
    key = (font.path, font.size, ch)
    if key not in _MISSING:
        # a font without the glyph renders it like an unassigned code point
        probe = np.asarray(font.getmask(ch))
        missing = np.asarray(font.getmask("\ue000"))
        _MISSING[key] = probe.shape == missing.shape and np.array_equal(probe, missing)
    return _MISSING[key]


_LEAK_KINDS = np.array(["exact", "noise", "shift", "resize", "contrast"])
TRANSFORMED_LEAK_KINDS = ("rotation", "crop", "jpeg")
TRANSFORMED_PER_KIND = 15


def _plant_transformed_leak(test_images, test_labels, leaked, names, images, labels, rng):
    """The second leak: ``TRANSFORMED_PER_KIND`` random test scans per kind (not
    of LEAK_DIGIT, not already leaked), each copied once, transformed, into a
    random letter or symbol class (unrelated to its digit); appended in place."""
    unrelated = [
        i
        for i, n in enumerate(names)
        if not n.isdigit() and n not in (HARMFUL_CLASS, *SUBPOP_STYLES)
    ]
    pool = np.setdiff1d(np.flatnonzero(test_labels != LEAK_DIGIT), leaked)
    chosen = rng.choice(pool, len(TRANSFORMED_LEAK_KINDS) * TRANSFORMED_PER_KIND, replace=False)
    variants = []
    for j, t in enumerate(chosen):
        kind = TRANSFORMED_LEAK_KINDS[j // TRANSFORMED_PER_KIND]
        cls = int(unrelated[rng.integers(len(unrelated))])
        images.append(_transformed_copy(test_images[t], kind, rng))
        labels.append(cls)
        variants.append(
            {
                "pretrain_index": len(images) - 1,
                "test_index": int(t),
                "kind": kind,
                "class": names[cls],
            }
        )
    return variants


def _transformed_copy(img, kind, rng):
    """A copy as scraped back from the web: slightly rotated, cropped and
    resized, or JPEG re-encoded at low quality."""
    import io

    pil = Image.fromarray(img)
    if kind == "rotation":
        angle = float(rng.uniform(5, 15) * rng.choice([-1, 1]))
        return np.asarray(pil.rotate(angle, resample=Image.BILINEAR))
    if kind == "crop":
        side = int(round(CANVAS * rng.uniform(0.8, 0.92)))
        x0, y0 = (int(rng.integers(0, CANVAS - side + 1)) for _ in range(2))
        box = (x0, y0, x0 + side, y0 + side)
        return np.asarray(pil.crop(box).resize((CANVAS, CANVAS), Image.BILINEAR))
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=int(rng.integers(20, 51)))
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("L"))


def _near_copy(img, kind, rng):
    x = img.astype(np.float32)
    if kind == "noise":
        x = x + rng.normal(0, 12, size=x.shape)
    elif kind == "shift":
        x = np.roll(x, shift=(int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1))
    elif kind == "resize":
        s = int(rng.integers(26, 30))
        small = Image.fromarray(img).resize((s, s), Image.BILINEAR)
        canvas = Image.new("L", (CANVAS, CANVAS), 0)
        off = (CANVAS - s) // 2
        canvas.paste(small, (off, off))
        x = np.asarray(canvas).astype(np.float32)
    elif kind == "contrast":
        x = x * rng.uniform(0.7, 0.9) + rng.uniform(0, 20)
    return np.clip(x, 0, 255).astype(np.uint8)


def make_planner_glyphs(num_classes=48, per_class=520, seed=0):
    """The planner demo's pretraining set: ``num_classes`` glyph classes (digits,
    then letters) of ``per_class`` images each, enough to span a 16x range of
    budgets. Returns ``(class_names, images (N, 32, 32) uint8, labels)``."""
    rng = np.random.default_rng([seed, 22])
    fonts = _load_fonts()
    classes = [(n, c) for n, c in glyph_classes() if n != HARMFUL_CLASS and len(c) == 1]
    if num_classes > len(classes):
        raise ValueError(f"at most {len(classes)} single-character classes; got {num_classes}")
    names, images, labels = [], [], []
    for cls, (name, ch) in enumerate(classes[:num_classes]):
        names.append(name)
        for _ in range(per_class):
            images.append(_render(ch, fonts, rng))
            labels.append(cls)
    return names, np.stack(images), np.asarray(labels, dtype=np.int64)
