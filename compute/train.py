"""One subset model: pretrain from scratch on some classes, transfer, evaluate.

``train_subset_model(config, index, mask_row, data)`` is a pure function of
its arguments (seeded from ``config.seed`` and ``index``), so any executor can
run any model anywhere and get the same row of outputs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import mmap
import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .digests import digest
from .nets import network_for, place_network

if TYPE_CHECKING:  # names in annotations only
    from .config import InfluenceConfig


@dataclasses.dataclass
class TransferData:
    """Decoded images (uint8, ``(N, H, W, C)``) and integer labels.

    ``pretrain_labels`` index the pretraining classes ``0..C-1``; the target
    labels index the target classes ``0..K-1``.
    """

    pretrain_images: np.ndarray
    pretrain_labels: np.ndarray
    num_pretrain_classes: int
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_target_classes: int

    def __post_init__(self):
        for name in ("pretrain", "train", "test"):
            images = getattr(self, f"{name}_images")
            labels = getattr(self, f"{name}_labels")
            if images.ndim != 4 or images.dtype != np.uint8:
                raise ValueError(f"{name}_images must be uint8 (N, H, W, C)")
            if len(images) != len(labels):
                raise ValueError(f"{name}_images and {name}_labels differ in length")
            if len(images) == 0:
                raise ValueError(f"{name} split is empty")
        self._tensor_cache = {}
        self._by_reference = False

    def by_reference(self):
        """This data, pickling its memory-mapped image arrays as their files'
        paths (:class:`MappedArrayFile`) instead of their bytes: for another
        process that sees the same files (this machine, or a filesystem every
        node mounts at the same path). Other arrays still travel as bytes."""
        shared = dataclasses.replace(self)
        shared._by_reference = True
        return shared

    def __getstate__(self):
        # shipped to other processes (Ray) as arrays or file references;
        # tensors are rebuilt there
        state = dict(self.__dict__)
        state["_tensor_cache"] = {}
        if state["_by_reference"]:
            for name in ("pretrain_images", "train_images", "test_images"):
                state[name] = MappedArrayFile.of(state[name]) or state[name]
        return state

    def __setstate__(self, state):
        for name, value in state.items():
            if isinstance(value, MappedArrayFile):
                state[name] = value.open()
        self.__dict__.update(state)

    def fingerprint(self):
        """A hash of the arrays: a store is only valid for the data it saw."""
        parts = []
        for name in ("pretrain", "train", "test"):
            for arr in (getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")):
                parts += [str(arr.shape), arr]
        return digest(*parts, f"{self.num_pretrain_classes}/{self.num_target_classes}")

    def normalisation(self):
        """Per-channel mean and std of the pretraining images (in [0, 1]),
        computed once."""
        if "normalisation" not in self._tensor_cache:
            self._tensor_cache["normalisation"] = channel_mean_std(self.pretrain_images)
        return self._tensor_cache["normalisation"]

    def tensors(self, device):
        """The splits on ``device`` as :class:`NormalisedImages` (uint8 kept,
        normalised per batch when indexed) and the pretraining labels."""
        key = str(device)
        if key not in self._tensor_cache:
            mean_std = self.normalisation()
            self._tensor_cache[key] = {
                "pretrain": NormalisedImages(self.pretrain_images, mean_std, device),
                "pretrain_labels": torch.from_numpy(self.pretrain_labels.astype(np.int64)).to(
                    device
                ),
                "train": NormalisedImages(self.train_images, mean_std, device),
                "test": NormalisedImages(self.test_images, mean_std, device),
            }
        return self._tensor_cache[key]


# Up to this many values the statistics are numpy's float32 mean and std of a
# float copy (64 MB at most), as every earlier version computed them, so the
# models of existing runs are reproduced bit for bit; above it they come from
# integer sums taken chunk by chunk (they differ by about one float32 ulp).
EXACT_STATISTICS_VALUES = 2**24
STATISTICS_CHUNK_VALUES = 2**22  # 32 MB of int64 at a time


def channel_mean_std(images):
    """Per-channel mean and std (+1e-6) of uint8 ``(N, H, W, C)`` images
    scaled to [0, 1], float32, in memory bounded by a constant."""
    if images.size <= EXACT_STATISTICS_VALUES:
        scaled = images.astype(np.float32) / 255.0
        return scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2)) + 1e-6
    # one pass: exact integer sums of the values and their squares
    channels = images.shape[-1]
    count = images.size // channels
    step = max(1, STATISTICS_CHUNK_VALUES // images[0].size)
    total = np.zeros(channels, dtype=np.int64)
    squares = np.zeros(channels, dtype=np.int64)
    for i in range(0, len(images), step):
        chunk = images[i : i + step].reshape(-1, channels).astype(np.int64)
        total += chunk.sum(axis=0)
        squares += (chunk * chunk).sum(axis=0)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return (mean / 255.0).astype(np.float32), (std / 255.0).astype(np.float32) + np.float32(1e-6)


class NormalisedImages:
    """uint8 ``(N, H, W, C)`` images that index as normalised float ``(..., C, H, W)``
    tensors on ``device``, one batch at a time.

    Training and attribution never hold a float copy of a split (4x the
    uint8 bytes): on a CPU the rows are gathered from the array itself (a
    memory-mapped image cache stays on disk), on a GPU the uint8 array is
    uploaded once and each batch converted there. Indexing takes a slice or
    a tensor of row indices of any shape (the result has that shape,
    followed by ``(C, H, W)``).
    """

    def __init__(self, images, mean_std, device, dtype=torch.float32):
        self.device = torch.device(device)
        self.dtype = dtype
        self._mean_std = mean_std
        self._source = images
        if self.device.type == "cpu":
            self._images = images
        else:
            self._images = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
            self._mean = torch.as_tensor(mean_std[0], device=self.device)
            self._std = torch.as_tensor(mean_std[1], device=self.device)

    def __len__(self):
        return len(self._images)

    @property
    def shape(self):
        n, h, w, c = self._images.shape
        return (n, c, h, w)

    def to(self, dtype):
        """The same images, indexing as ``dtype``."""
        return NormalisedImages(self._source, self._mean_std, self.device, dtype)

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            lead = None
        else:
            rows = torch.as_tensor(rows)
            lead = rows.shape
            rows = rows.reshape(-1)
        if self.device.type == "cpu":
            picked = self._images[rows if lead is None else rows.cpu().numpy()]
            # numpy's own expression, as the float tensors were built before
            mean, std = self._mean_std
            x = torch.from_numpy((picked.astype(np.float32) / 255.0 - mean) / std)
        else:
            picked = self._images[rows if lead is None else rows.to(self.device)]
            x = (picked.float() / 255.0 - self._mean) / self._std
        x = x.permute(0, 3, 1, 2).to(self.dtype).contiguous()
        return x if lead is None else x.reshape(*lead, *x.shape[1:])


@dataclasses.dataclass(frozen=True)
class MappedArrayFile:
    """A read-only memory-mapped array, named by its file rather than carried.

    ``of(array)`` is ``None`` unless ``array`` maps a whole C-ordered array
    of a file (as ``np.load(mmap_mode="r")`` gives; a view or slice of one
    is not). The file's size and modification time travel with it, so a
    process that finds another file there refuses it instead of reading it.
    """

    path: str
    offset: int
    shape: tuple
    dtype: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, array):
        if not (
            isinstance(array, np.memmap)
            and isinstance(array.base, mmap.mmap)
            and array.filename
            and array.flags.c_contiguous
        ):
            return None
        st = os.stat(array.filename)
        return cls(
            array.filename, array.offset, array.shape, array.dtype.str, st.st_size, st.st_mtime_ns
        )

    def open(self):
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"image file {self.path} is not on this machine: images shipped by path need "
                f"the image cache on a filesystem every node mounts at the same path "
                f"(or ship them through the object store: images='object_store')"
            ) from None
        if (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns):
            raise RuntimeError(
                f"image file {self.path} changed after the driver mapped it "
                f"(size or modification time differ); run the job again"
            )
        return np.memmap(self.path, self.dtype, "r", self.offset, self.shape)


OUTPUT_NAMES = ("prob", "margin", "correct", "pred")


def resolve_device(device: str):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but CUDA is not available")
    return torch.device(device)


def model_seed(config, index):
    """A per-model seed derived from the run seed and the model index."""
    return int(np.random.SeedSequence([config.seed, index]).generate_state(1)[0])


def train_subset_model(
    config: InfluenceConfig,
    index: int,
    mask_row: np.ndarray,
    data: TransferData,
    sample_mask: np.ndarray | None = None,
):
    """Trains model ``index`` on the classes in ``mask_row``; returns outputs.

    Returns:
        a dict of ``(T,)`` arrays over the target test samples: ``prob``
        (softmax probability of the correct class), ``margin`` (correct logit
        minus the best other), ``correct`` (0/1) and ``pred`` (predicted
        target class)
    """
    net, gen, device = pretrain_network(config, index, mask_row, data, sample_mask)
    return transfer_outputs(config, net, gen, data, device)


def transfer_outputs(config, net, gen, data, device):
    """Transfers a pretrained ``net`` to the target task; its test outputs."""
    t = data.tensors(device)
    train_y = data.train_labels.astype(np.int64)
    if config.transfer == "linear":
        logits = _linear_probe(
            net,
            t["train"],
            train_y,
            t["test"],
            data.num_target_classes,
            config.probe_c,
            device,
            config.precision,
            config.probe_max_iter,
        )
    else:
        finetune(config, net, gen, data, device)
        logits = _eval_batched(net, net, t["test"], device, config.precision)
    return outputs_from_logits(logits, data.test_labels)


def finetune(config, net, gen, data, device):
    """Fine-tunes all of ``net`` on the target train split under a new head
    (``net.head``, returned), drawing from the model's stream ``gen``."""
    t = data.tensors(device)
    net.head = nn.Linear(net.feature_dim, data.num_target_classes).to(device)
    y_train = torch.from_numpy(data.train_labels.astype(np.int64)).to(device)
    _fit(
        net,
        t["train"],
        y_train,
        config,
        config.finetune_epochs,
        min(config.batch_size, len(y_train)),
        config.lr / config.finetune_lr_divisor,
        gen,
        device,
    )
    return net.head


def pretrain_network(config, index, mask_row, data, sample_mask=None):
    """Model ``index`` pretrained from scratch on the classes in ``mask_row``
    (and, with ``sample_mask``, only on those of their samples it marks).

    Returns ``(net, generator, device)``; the generator continues the model's
    seeded stream (transfer draws from it after pretraining).
    """
    device = resolve_device(config.device)
    net, gen, keep, remap = seeded_model(config, index, mask_row, data, device, sample_mask)
    t = data.tensors(device)
    rows = keep.nonzero().flatten()
    y_pre = remap[t["pretrain_labels"][rows]]
    net = place_network(net, device)
    _fit(
        net,
        t["pretrain"],
        y_pre,
        config,
        config.epochs,
        config.batch_size,
        config.lr,
        gen,
        device,
        config.augment_shift,
        rows,
    )
    return net, gen, device


def seeded_model(config, index, mask_row, data, device, sample_mask=None):
    """What model ``index`` starts from, the same on every training path.

    Seeds torch's global RNG and the model's own generator from the model's
    seed, then builds the untrained network (on the CPU, from that seed).
    Returns ``(net, generator, keep, remap)``: ``keep`` marks the pretraining
    samples the model sees (on ``device``), ``remap`` maps pretraining class
    indices to the model's head (-1: not seen). Raises ``ValueError`` when
    the masks select no sample.
    """
    seed = model_seed(config, index)
    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    labels = data.tensors(device)["pretrain_labels"]
    classes = np.flatnonzero(mask_row)
    remap = torch.full((data.num_pretrain_classes,), -1, dtype=torch.long)
    remap[torch.from_numpy(classes)] = torch.arange(len(classes))
    remap = remap.to(device)
    keep = remap[labels] >= 0
    if sample_mask is not None:
        keep &= torch.from_numpy(np.asarray(sample_mask, dtype=bool)).to(device)
    if not bool(keep.any()):
        raise ValueError(
            f"model {index} would pretrain on no samples: its mask selects no class or no sample"
        )
    net = network_for(config, len(classes))
    return net, gen, keep, remap


def embed_images(net, images, device, mean_std=None, batch_size=1024):
    """Frozen features of uint8 ``(N, H, W, C)`` images, ``(N, D)`` float32.

    ``mean_std``: the normalisation the network was trained with (see
    :meth:`TransferData.normalisation`).
    """
    # normalised on the CPU a batch at a time: the set may be far larger than
    # the device's memory
    normalised = NormalisedImages(images, mean_std, "cpu")
    out = []
    net.eval()
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = normalised[i : i + batch_size].to(device)
            with _autocast(device):
                out.append(net.features(x).float().cpu())
    return torch.cat(out).numpy().astype(np.float32)


def outputs_from_logits(logits, labels):
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(len(labels))
    shifted = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    correct_logit = logits[rows, labels]
    others = logits.copy()
    others[rows, labels] = -np.inf
    pred = logits.argmax(axis=1)
    return {
        "prob": probs[rows, labels].astype(np.float32),
        "margin": (correct_logit - others.max(axis=1)).astype(np.float32),
        "correct": (pred == labels).astype(np.float32),
        "pred": pred.astype(np.int32),
    }


@functools.cache
def cpu_has_matrix_units():
    """Whether this CPU multiplies bf16 matrices in tile units (Intel AMX).

    Only there is bf16 autocast faster than fp32 for these networks: with
    avx512_bf16 alone it was measured no faster (docs/performance.md).
    """
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # torch >= 2.3
    if probe is not None:
        try:
            return bool(probe())
        except RuntimeError:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in f)
    except OSError:
        return False


def resolve_precision(device, precision="auto"):
    """``"fp32"`` or ``"bf16"``: what ``precision`` means on ``device``.

    ``"auto"``: bf16 autocast on CUDA and on CPUs with matrix units (AMX),
    fp32 on other CPUs; the per-class influence of the two agrees within its
    standard errors (``benchmarks/cpu_throughput.py --agreement``).
    """
    if precision != "auto":
        return precision
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_matrix_units()):
        return "bf16"
    return "fp32"


def _autocast(device, precision="auto"):
    bf16 = resolve_precision(device, precision) == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def lr_factor(step, total, warmup_fraction):
    """The learning-rate multiplier at ``step`` of ``total``: linear warm-up
    for ``warmup_fraction`` of the steps, then linear decay to zero."""
    warm = max(1, int(warmup_fraction * total))
    return min((step + 1) / warm, max(0.0, (total - step) / (total - warm + 1e-9)))


def batch_schedule(n, epochs, batch_size, gen, shift=0):
    """One model's training batches, the same on every training path.

    Returns ``(total, batches)``: ``total`` steps of the learning-rate
    schedule, and an iterator of ``(rows, offsets)``: each epoch a
    permutation of ``n`` rows drawn from ``gen``, cut into batches (CPU
    tensors); a batch of one sample is skipped (BatchNorm needs two);
    ``offsets`` (shift augmentation, drawn from ``gen`` right after its
    batch) or ``None``.
    """
    steps_per_epoch = max(1, math.ceil(n / batch_size))

    def batches():
        for _ in range(epochs):
            order = torch.randperm(n, generator=gen)
            for i in range(steps_per_epoch):
                rows = order[i * batch_size : (i + 1) * batch_size]
                if len(rows) < 2:
                    continue
                yield rows, (draw_shifts(len(rows), shift, gen) if shift else None)

    return epochs * steps_per_epoch, batches()


def draw_shifts(count, shift, gen):
    """``(count, 2)`` offsets in ``[-shift, shift]`` from the model's stream."""
    return torch.randint(-shift, shift + 1, (count, 2), generator=gen)


def shift_images(x, offsets, shift):
    """Each image of ``x`` (N, C, H, W) moved by its ``offsets`` (N, 2) rows
    and columns, edges replicated; on ``x``'s device."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (shift,) * 4, mode="replicate").permute(0, 2, 3, 1)
    offsets = offsets.to(x.device)
    rows = torch.arange(h, device=x.device)[None] + shift + offsets[:, :1]
    cols = torch.arange(w, device=x.device)[None] + shift + offsets[:, 1:]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _fit(net, x, y, config, epochs, batch_size, lr, gen, device, shift=0, rows=None):
    """Trains ``net`` on ``y`` and the images of ``x`` at ``rows`` (all of
    them by default), in the model's batch schedule."""
    total, batches = batch_schedule(len(y), epochs, batch_size, gen, shift)
    opt = torch.optim.SGD(
        net.parameters(),
        lr=lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, total, config.warmup_fraction)
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    net.train()
    for batch_rows, offsets in batches:
        idx = batch_rows.to(device)
        batch = x[idx if rows is None else rows[idx]]
        if shift:
            batch = shift_images(batch, offsets, shift)
        with _autocast(device, config.precision):
            loss = loss_fn(net(batch), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()


@torch.no_grad()
def _eval_batched(fn, net, x, device, precision="auto", batch_size=1024):
    """``fn(x)`` in eval mode over batches, as float64 numpy."""
    net.eval()
    out = []
    for i in range(0, len(x), batch_size):
        with _autocast(device, precision):
            out.append(fn(x[i : i + batch_size]).float().cpu())
    return torch.cat(out).numpy().astype(np.float64)


def _linear_probe(
    net, x_train, y_train, x_test, num_classes, c, device, precision="auto", max_iter=2000
):
    """Multinomial logistic regression on standardised frozen features."""
    probe = fit_probe(net, x_train, y_train, c, device, precision, max_iter)
    f_test = _eval_batched(net.features, net, x_test, device, precision)
    return probe_logits(probe, f_test, num_classes)


def fit_probe(net, x_train, y_train, c, device, precision="auto", max_iter=2000):
    """The linear probe of ``net``: a scikit-learn pipeline (standardise, then
    multinomial logistic regression) fitted on its frozen train features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    f_train = _eval_batched(net.features, net, x_train, device, precision)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    return probe.fit(f_train, y_train)


# the logit of a target class absent from the train split: never predicted
ABSENT_CLASS_LOGIT = -1e9


def probe_logits(probe, features, num_classes):
    """``(N, num_classes)`` logits of a fitted probe on ``features``."""
    scores = probe.decision_function(features)
    if scores.ndim == 1:  # two classes: one score, the logit of classes_[1]
        scores = np.stack([np.zeros_like(scores), scores], axis=1)
    logits = np.full((len(features), num_classes), ABSENT_CLASS_LOGIT)
    logits[:, probe.classes_] = scores
    return logits


def probe_layer(probe, feature_dim, num_classes):
    """The fitted probe as an ``nn.Linear`` on raw features (the standardisation
    folded into its weights): the same logits as :func:`probe_logits`, and
    differentiable with respect to the network under it."""
    scaler, logistic = probe[0], probe[-1]
    coef = np.atleast_2d(logistic.coef_) / scaler.scale_
    bias = np.atleast_1d(logistic.intercept_) - coef @ scaler.mean_
    if len(probe.classes_) == 2 and coef.shape[0] == 1:  # one score for classes_[1]
        coef = np.concatenate([np.zeros_like(coef), coef])
        bias = np.concatenate([[0.0], bias])
    weight = np.zeros((num_classes, feature_dim))
    full_bias = np.full(num_classes, ABSENT_CLASS_LOGIT)
    weight[probe.classes_] = coef
    full_bias[probe.classes_] = bias
    layer = nn.Linear(feature_dim, num_classes)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(full_bias))
    return layer
