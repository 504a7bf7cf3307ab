"""Is a candidate hidden set of pretraining images harmful? Checked by retraining.

For planting example-level truth in the demo: a set of images hidden inside
benign classes whose harm retraining confirms. Each design adds ``--size``
rendered glyphs to the demo's pretraining set (labelled into existing
classes, so no class as a whole is new), then trains, per seed, three models
on every class (the demo's protocol: resnet_small width 16, 16x16, 4
epochs, linear probe):

- ``full``: with the planted images;
- ``without``: the planted images removed;
- ``random``: as many random original images removed instead;

all three from the same model seed (paired), seed after seed in rounds
until the verdict on removing the set (mean correct-class probability,
against ``full``) settles or ``--seeds`` are spent: the product's sequential
check (transferscope.compute.sequential). Reported per design: the verdicts,
the seeds used, the mean test-accuracy change of removing the set (against
``full`` and against ``random``) with its anytime-valid 95% interval, the
standard deviation of the paired differences, and the seeds per arm a +-1
point fixed-size interval would need. A harmful set shows as ``without -
full`` above zero.

Designs (glyphs drawn heavy: stroke 2-3, as the demo's ``bold`` class):

- ``heavy04``: heavy 0-4 glyphs in their own digit classes;
- ``heavy04_as59``: heavy 0-4 glyphs labelled as the digit five above (0 -> 5);
- ``heavy59_as04``: heavy 5-9 glyphs labelled as the digit five below;
- ``scan_mislabelled``: digit glyphs degraded like the target's 8x8 scans
  (box-downsampled to 8x8 in 17 grey levels, upsampled), each in a wrong
  digit class;
- ``heavy04_in_letters``: heavy 0-4 glyphs, a few in each letter and symbol
  class; ``heavyscan04_in_letters``: the same degraded like the scans;
- ``heavy_in_letters``: heavy glyphs of random characters, a few in each
  letter and symbol class that does not draw them.

    .venv/bin/python benchmarks/hidden_harm.py --designs heavy_in_letters --size 200 --seeds 32

Writes benchmarks/results/hidden_harm.json (or ``--results``), adding to
what is there.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from ray_benchmark import demo_transfer_data, pool  # noqa: E402

DESIGNS = (
    "heavy04",
    "heavy04_as59",
    "heavy59_as04",
    "scan_mislabelled",
    "heavy04_in_letters",
    "heavyscan04_in_letters",
    "heavy_in_letters",
)


def scan_like(image):
    """A 32x32 glyph degraded like the target's scans."""
    small = np.asarray(Image.fromarray(image).resize((8, 8), Image.BOX)).astype(np.float64)
    small = (np.round(small / 255 * 16) / 16 * 255).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((32, 32), Image.BILINEAR))


def letter_and_symbol_classes(names):
    """Indices of the glyph classes that are not digits (nor ``bold`` or a style)."""
    from transferscope import demo_data

    skip = (demo_data.HARMFUL_CLASS, *demo_data.SUBPOP_STYLES)
    return [i for i, n in enumerate(names) if not n.isdigit() and n not in skip]


def heavy_in_letters(names, fonts, rng, size):
    """``size`` heavy-stroke glyphs, each of a random character, spread evenly
    over the letter and symbol classes, none in the class of its own
    character. A heavy glyph filed under an unrelated letter can only be
    fitted by telling heavy strokes apart, so the backbone keeps stroke
    weight as a feature, which the few-shot train split's ink bias rewards
    (the ``bold`` mechanism, with no class standing out)."""
    from transferscope import demo_data

    unrelated = letter_and_symbol_classes(names)
    chars_of = dict(demo_data.glyph_classes())
    every_char = "".join(
        chars for name, chars in demo_data.glyph_classes() if name != demo_data.HARMFUL_CLASS
    )
    images, labels = [], []
    for j in range(size):
        cls = unrelated[j % len(unrelated)]
        others = every_char.replace(chars_of[names[cls]], "")
        stroke = int(rng.integers(2, 4))
        images.append(demo_data._render(others[rng.integers(len(others))], fonts, rng, stroke))
        labels.append(cls)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def plant(design, size, class_names, seed=0):
    """``(images (size, 32, 32) uint8, labels)`` of a design's hidden set."""
    from transferscope import demo_data

    fonts = demo_data._load_fonts()
    if design == "heavy_in_letters":
        return heavy_in_letters(class_names, fonts, np.random.default_rng([seed, 18]), size)
    others = letter_and_symbol_classes(class_names)
    rng = np.random.default_rng([seed, 18])
    images, labels = [], []
    for j in range(size):
        heavy = int(rng.integers(2, 4))
        if design == "heavy04":
            digit = label = j % 5
        elif design == "heavy04_as59":
            digit = j % 5
            label = digit + 5
        elif design == "heavy59_as04":
            digit = 5 + j % 5
            label = digit - 5
        elif design == "scan_mislabelled":
            digit = j % 10
            label = (digit + 1 + rng.integers(9)) % 10
        elif design in ("heavy04_in_letters", "heavyscan04_in_letters"):
            digit = j % 5
            label = None
        else:
            raise ValueError(f"design must be one of {DESIGNS}; got {design!r}")
        if design == "heavyscan04_in_letters":
            image = scan_like(demo_data._render(str(digit), fonts, rng, stroke=heavy))
        elif design == "scan_mislabelled":
            image = scan_like(
                demo_data._render(str(digit), fonts, rng, stroke=int(rng.integers(1, 3)))
            )
        else:
            image = demo_data._render(str(digit), fonts, rng, stroke=heavy)
        images.append(image)
        if label is None:  # hidden in a letter or symbol class
            labels.append(others[j % len(others)])
        else:
            labels.append(class_names.index(str(label)))
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def paired(a, b):
    """``a - b`` by seed, in points, with the spread the seed count needs."""
    from transferscope.compute import StoppingRule, paired_verdict

    # anytime-valid: the check stopped when its verdict settled
    c = paired_verdict(a, b, StoppingRule(min_effect=0.0))
    sd = 100 * float(np.std(np.asarray(a) - np.asarray(b), ddof=1))
    return {
        "points": 100 * c["diff"],
        "ci95": [100 * c["interval"][0], 100 * c["interval"][1]],
        "sd_of_differences": sd,
        "better_in": c["wins"],
        # seeds per arm for a +-1 point 95% interval at this spread
        "seeds_for_1_point": int(np.ceil((1.96 * sd) ** 2)),
    }


def check(design, size, seeds, base, class_names, round_seeds=4):
    """Trains the three arms seed after seed, in rounds, until the verdict on
    removing the set (against the full set, on mean correct-class probability)
    settles or ``seeds`` are spent: the product's sequential check."""
    from transferscope.compute import (
        InfluenceConfig,
        StoppingRule,
        TransferData,
        paired_verdict,
        train_subset_model,
    )

    from transferscope.demo import DEFAULTS

    images, labels = plant(design, size, class_names)
    data = TransferData(
        np.concatenate([base.pretrain_images, pool(images)]),
        np.concatenate([base.pretrain_labels, labels]),
        base.num_pretrain_classes,
        base.train_images,
        base.train_labels,
        base.test_images,
        base.test_labels,
        base.num_target_classes,
    )
    n_old = len(base.pretrain_labels)
    planted = np.arange(n_old, n_old + size)
    config = InfluenceConfig(epochs=DEFAULTS["epochs"], seed=0, device="cpu", precision="fp32")
    every_class = np.ones(base.num_pretrain_classes, dtype=bool)
    accuracy = {"full": [], "without": [], "random": []}
    prob = {"full": [], "without": [], "random": []}
    rule = StoppingRule(round_seeds=round_seeds, max_seeds=seeds)
    looks = set(rule.looks())
    start = time.perf_counter()
    for s in range(seeds):
        drawn = np.random.default_rng([s, 99]).choice(n_old, size, replace=False)
        for arm, removed in (("full", []), ("without", planted), ("random", drawn)):
            keep = np.ones(len(data.pretrain_labels), dtype=bool)
            keep[removed] = False
            out = train_subset_model(config, 7_000_000 + s, every_class, data, keep)
            accuracy[arm].append(float(out["correct"].mean()))
            prob[arm].append(float(out["prob"].mean()))
        print(f"  {design} seed {s}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in accuracy.items()))
        if s + 1 in looks:
            verdict = paired_verdict(prob["without"], prob["full"], rule)
            print(f"  look at {s + 1} seeds: {verdict['verdict']} {verdict['interval']}")
            if verdict["verdict"] != "undecided":
                break
    used = len(accuracy["full"])
    from transferscope.compute.config import ENGINE_VERSION

    result = {
        "engine_version": ENGINE_VERSION,
        "size": size,
        "seed_budget": seeds,
        "seeds": used,
        "seconds": time.perf_counter() - start,
        "stopping_rule": rule.to_dict(),
        "verdict_without_minus_full": paired_verdict(prob["without"], prob["full"], rule),
        "verdict_without_minus_random": paired_verdict(prob["without"], prob["random"], rule),
        "mean_accuracy": {k: float(np.mean(v)) for k, v in accuracy.items()},
        "without_minus_full": paired(accuracy["without"], accuracy["full"]),
        "without_minus_random": paired(accuracy["without"], accuracy["random"]),
    }
    for name in ("without_minus_full", "without_minus_random"):
        r = result[name]
        print(
            f"{design}: {name} {r['points']:+.2f} points [{r['ci95'][0]:+.2f}, "
            f"{r['ci95'][1]:+.2f}], better in {r['better_in']}/{used}; sd of the paired "
            f"differences {r['sd_of_differences']:.2f} ({r['seeds_for_1_point']} seeds for +-1)"
        )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS)
    parser.add_argument("--size", type=int, default=100, help="planted images per design")
    parser.add_argument(
        "--seeds", type=int, default=32, help="seed budget per arm (rounds of --round-seeds)"
    )
    parser.add_argument("--round-seeds", type=int, default=4, help="seeds per round")
    parser.add_argument("--results", default=os.path.join(HERE, "results", "hidden_harm.json"))
    args = parser.parse_args()
    from transferscope.demo_data import SUBPOP_STYLES, glyph_classes

    # the demo's own class order: glyph classes, then the style classes
    class_names = [name for name, _ in glyph_classes()] + list(SUBPOP_STYLES)
    base = demo_transfer_data()
    if base.num_pretrain_classes != len(class_names):
        raise RuntimeError("the demo's classes changed; update class_names here")
    results = {}
    if os.path.exists(args.results):
        with open(args.results) as f:
            results = json.load(f)
    results["machine"] = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for design in args.designs:
        results[design] = check(design, args.size, args.seeds, base, class_names, args.round_seeds)
        os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
        with open(args.results, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
