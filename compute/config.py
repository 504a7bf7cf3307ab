"""The run configuration: everything that decides what a subset model computes.

A model's outputs are a pure function of (``InfluenceConfig``, model index,
data), so the config is hashed into the results store and a store written
under another config is refused.
"""

import dataclasses
import json

from .checks import check_choice, check_int, check_number
from .digests import digest
from .subsets import DESIGNS

# how an image becomes a square (compute.images): a centre crop, or the whole image
RESIZE_POLICIES = ("crop", "squash")

TRANSFER_MODES = ("linear", "finetune")
TARGET_FUNCTIONS = ("prob", "margin", "correct")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
# Bump when a change to the engine changes what a model outputs, so stores
# written by older code are refused rather than silently mixed.
ENGINE_VERSION = 2
# Upper bounds, checked before any work. Models: the estimator holds the
# (M, C) masks in float64, 8 MB per 1,000 models at 1,000 classes; a million
# models is beyond any run we know of (the paper trained 7,540 at ImageNet
# scale). Image size: torchvision's classifiers are trained at 224-518 px.
MAX_NUM_MODELS = 1_000_000
MAX_IMAGE_SIZE = 1024
MAX_LR = 10.0
# training constants that became fields in 0.2: at these values they stay out
# of the fingerprint, so stores of earlier versions keep their hash
TRAINING_DEFAULTS = {
    "label_smoothing": 0.1,
    "momentum": 0.9,
    "warmup_fraction": 0.2,
    "finetune_lr_divisor": 10.0,
    "probe_max_iter": 2000,
    "bn_momentum": None,
    "bn_eps": None,
}


@dataclasses.dataclass(frozen=True)
class InfluenceConfig:
    """How the subset models are trained and transferred.

    Args:
        num_models: number of subset models M (an ``"orthogonal"`` design
            rounds it up to whole blocks: see :mod:`.subsets`)
        alpha: fraction of pretraining classes each model sees
        design: how the subsets are drawn: ``"orthogonal"`` (folded
            Hadamard blocks), ``"balanced"``, ``"independent"`` (the
            paper's) or ``"pairs"`` (complementary pairs; before 0.2)
        holdout_models: extra models on independent random subsets, for the
            linear datamodeling score (0: none); they do not enter the
            estimate
        seed: seed of the subset design and of every model's training
        arch: ``"resnet_small"`` (a ResNet for small images) or the name of a
            torchvision classification architecture, e.g. ``"resnet18"``
        width: base channel width of ``resnet_small``
        image_size: side length the images are resized to
        channels: 1 (grayscale) or 3 (RGB)
        resize: ``"crop"`` (the shorter side to ``image_size``, then the
            centre square, as torchvision's Resize + CenterCrop) or
            ``"squash"`` (the whole image to a square); the same on square
            images
        epochs: pretraining epochs
        batch_size: pretraining batch size
        lr: peak learning rate (SGD with Nesterov momentum, one-cycle)
        weight_decay: SGD weight decay
        transfer: ``"linear"`` (logistic regression on frozen features, as in
            the paper) or ``"finetune"`` (train the whole network)
        finetune_epochs: epochs of full fine-tuning
        probe_c: inverse L2 strength of the linear probe
        device: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``
        precision: ``"auto"`` (bf16 autocast on CUDA and on CPUs with AMX
            matrix units, fp32 on other CPUs), ``"fp32"`` or ``"bf16"``
            (autocast on either device)
        augment_shift: pretraining augmentation: each sample of a batch is
            shifted by up to this many pixels in each direction (edges
            replicated), drawn from the model's seed and done on the device;
            0: none
        label_smoothing: label smoothing of the training loss
        momentum: SGD's Nesterov momentum
        warmup_fraction: fraction of the steps the learning rate rises
            linearly before it decays linearly to zero
        finetune_lr_divisor: fine-tuning runs at ``lr / finetune_lr_divisor``
        probe_max_iter: iterations of the linear probe's solver (lbfgs)
        bn_momentum, bn_eps: BatchNorm's running-average momentum and epsilon;
            ``None``: the architecture's own (``resnet_small``: 0.1, 1e-5)
    """

    num_models: int = 144
    alpha: float = 0.5
    seed: int = 0
    arch: str = "resnet_small"
    width: int = 16
    image_size: int = 16
    channels: int = 1
    resize: str = "crop"
    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.2
    weight_decay: float = 5e-4
    transfer: str = "linear"
    finetune_epochs: int = 30
    probe_c: float = 1.0
    device: str = "auto"
    precision: str = "auto"
    augment_shift: int = 0
    design: str = "orthogonal"
    holdout_models: int = 16
    label_smoothing: float = 0.1
    momentum: float = 0.9
    warmup_fraction: float = 0.2
    finetune_lr_divisor: float = 10.0
    probe_max_iter: int = 2000
    bn_momentum: float | None = None
    bn_eps: float | None = None

    def __post_init__(self):
        check_int(self.num_models, "num_models", 2, MAX_NUM_MODELS)
        check_number(self.alpha, "alpha", 0, 1, low_open=True, high_open=True)
        check_int(self.seed, "seed", 0, 2**63 - 1)
        check_choice(self.design, "design", DESIGNS)
        check_int(self.holdout_models, "holdout_models", 0, MAX_NUM_MODELS)
        if 0 < self.holdout_models < 3:
            raise ValueError(
                f"holdout_models must be 0 (none) or >= 3 (a rank correlation "
                f"over them); got {self.holdout_models}"
            )
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"arch must be a non-empty string; got {self.arch!r}")
        check_int(self.width, "width", 1, 1024)
        check_int(self.image_size, "image_size", 4, MAX_IMAGE_SIZE)
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"channels must be 1 or 3; got {self.channels!r}")
        check_choice(self.resize, "resize", RESIZE_POLICIES)
        check_int(self.epochs, "epochs", 1, 10_000)
        # a batch of one sample leaves BatchNorm nothing to normalise over
        check_int(self.batch_size, "batch_size", 2, 65_536)
        check_int(self.finetune_epochs, "finetune_epochs", 1, 10_000)
        check_choice(self.transfer, "transfer", TRANSFER_MODES)
        check_choice(self.precision, "precision", PRECISIONS)
        check_int(self.augment_shift, "augment_shift", 0)
        if self.augment_shift >= self.image_size // 2:
            raise ValueError(
                f"augment_shift must be below half the image size "
                f"({self.image_size // 2}); got {self.augment_shift}"
            )
        check_choice(self.device, "device", DEVICES)
        # beyond these, SGD diverges at once on every architecture here
        check_number(self.lr, "lr", 0, MAX_LR, low_open=True)
        check_number(self.weight_decay, "weight_decay", 0, 1)
        check_number(self.probe_c, "probe_c", 0, 1e6, low_open=True)
        check_number(self.label_smoothing, "label_smoothing", 0, 1, high_open=True)
        check_number(self.momentum, "momentum", 0, 1, high_open=True)
        check_number(self.warmup_fraction, "warmup_fraction", 0, 1)
        check_number(self.finetune_lr_divisor, "finetune_lr_divisor", 0, 1e6, low_open=True)
        check_int(self.probe_max_iter, "probe_max_iter", 1, 10_000_000)
        if self.bn_momentum is not None:
            check_number(self.bn_momentum, "bn_momentum", 0, 1)
        if self.bn_eps is not None:
            check_number(self.bn_eps, "bn_eps", 0, 1, low_open=True)

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown InfluenceConfig fields: {sorted(unknown)}")
        return cls(**d)

    def fingerprint(self, data_fingerprint=""):
        """A hash of the fields that change what a model computes.

        ``device`` is left out on purpose: a run started on a GPU may resume on
        a CPU (results then agree within floating-point tolerance); so is
        ``holdout_models``, which trains other models than the run's.
        """
        d = self.to_dict()
        d.pop("device")
        d.pop("holdout_models")
        d.pop("resize")  # what it changes is in the data's fingerprint
        if d["design"] == "pairs":  # the only design before 0.2: old stores keep their hash
            d.pop("design")
        # runs from before these fields keep their hash
        if d["precision"] == "auto":
            d.pop("precision")
        if d["augment_shift"] == 0:
            d.pop("augment_shift")
        for name, value in TRAINING_DEFAULTS.items():
            if d[name] == value:
                d.pop(name)
        d["data"] = data_fingerprint
        d["engine_version"] = ENGINE_VERSION
        return digest(json.dumps(d, sort_keys=True))
