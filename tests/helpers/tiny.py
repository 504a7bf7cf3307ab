"""Tiny datasets and settings shared by the tests and the Ray test driver.

Plain functions (no pytest), so a driver process can build the same data.
"""

import os
import uuid

import numpy as np

# 4 models: fewer than an orthogonal block for 6 classes (8), so the balanced
# design; no held-out models (the tests that need them ask for them)
TINY_KWARGS = dict(num_models=4, epochs=1, width=4, batch_size=16, seed=0, holdout_models=0)


def _pattern(cls, rng, size=16):
    """A simple class-specific pattern: bars at class-dependent rows/angles."""
    img = np.zeros((size, size), np.float32)
    row = 2 + (cls * 3) % (size - 4)
    img[row : row + 2, 2 : size - 2] = 1.0
    if cls % 2:
        img[2 : size - 2, row : row + 2] = 1.0
    img += rng.normal(0, 0.15, img.shape)
    img = np.roll(img, rng.integers(-1, 2), axis=1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def build_tiny_datasets(folder, name=None):
    """A 6-class pretraining set and a 3-class target (train/test tags), images in ``folder``."""
    import fiftyone as fo
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    name = name or uuid.uuid4().hex[:6]
    pre = fo.Dataset(f"pre-{name}")
    samples = []
    for c in range(6):
        for i in range(10):
            p = f"{folder}/pre_{c}_{i}.png"
            Image.fromarray(_pattern(c, rng)).save(p)
            samples.append(fo.Sample(filepath=p, ground_truth=fo.Classification(label=f"class{c}")))
    pre.add_samples(samples, progress=False)
    tgt = fo.Dataset(f"tgt-{name}")
    samples = []
    for c in range(3):
        for i in range(10):
            split = "train" if i < 4 else "test"
            p = f"{folder}/tgt_{c}_{i}.png"
            Image.fromarray(_pattern(c * 2, rng)).save(p)
            samples.append(
                fo.Sample(filepath=p, tags=[split], ground_truth=fo.Classification(label=f"t{c}"))
            )
    tgt.add_samples(samples, progress=False)
    return pre, tgt


def operator_params(pre, tgt, key, **extra):
    """compute_class_influence's form parameters for the tiny datasets."""
    params = dict(
        pretrain_dataset=pre.name,
        pretrain_label_field="ground_truth",
        target_dataset=tgt.name,
        target_label_field="ground_truth",
        split_by="tags",
        train_split="train",
        test_split="test",
        num_models=TINY_KWARGS["num_models"],
        epochs=TINY_KWARGS["epochs"],
        alpha=0.5,
        arch="resnet_small",
        image_size=16,
        transfer="linear",
        device="cpu",
        seed=0,
        run_key=key,
        overwrite=False,
        holdout_models=0,
    )
    params.update(extra)
    return params
