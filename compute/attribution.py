"""Example-level attribution: TRAK (Park et al., ICML 2023) for transfer learning.

Which pretraining *images* help or hurt each target test image. The scores
come from ``traker`` (MadryLab's TRAK library) over a few independently
trained models, in the transfer variant its authors describe: a pretraining
image is featurized with the gradient of the pretraining classifier's margin,
a target image with the gradient of the transferred classifier's margin (the
linear probe, as a layer, or the fine-tuned head), both with respect to the
backbone's parameters only, the one thing the two tasks share.

``scores[i, t] > 0``: pretraining image ``i`` raises target image ``t``'s
margin (helps); ``< 0``: lowers it (hurts).

TRAK weights each pretraining image by ``1 - p`` (its loss gradient with
respect to its margin, ``p`` the probability of its class): an image the
model already fits counts for almost nothing. By default that weighting is
left out (``loss_weighting="none"``): on the demo, the planted copies of test
images sit in a class the model fits well, so the weighting hides them
(recall@10 0.04 against 0.48 without it, the same 4 models), while both
predict held-out models alike (datamodeling score 0.040 and 0.041; docs/jobs.md).

Each attribution model is a state dict saved by ``torch.save`` and read back
with ``weights_only=True`` (never unpickled); traker writes JSON and ``.npy``
memory maps only.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .checks import check_choice, check_int, check_number
from .digests import digest
from .nets import network_for
from .store import claim, make_dirs, remove_scratch, save_array
from .train import (
    _eval_batched,
    finetune,
    fit_probe,
    pretrain_network,
    probe_layer,
    resolve_device,
)

if TYPE_CHECKING:  # names in annotations only
    from collections.abc import Callable

    from .config import InfluenceConfig
    from .train import TransferData

logger = logging.getLogger(__name__)

# Attribution models: model k trains with seed ATTRIBUTION_INDEX_BASE + k, far
# from the class-level subset, held-out, retraining and backbone models.
ATTRIBUTION_INDEX_BASE = 5_000_000
# Held-out models for the example-level datamodeling score: model j trains on
# a random half of the pretraining images with seed HOLDOUT_INDEX_BASE + j.
HOLDOUT_INDEX_BASE = 6_000_000
# traker's CPU projector keeps its random matrix when it fits in one block and
# regenerates every block for every batch otherwise (seconds per batch at demo
# scale): one block up to this many bytes (resnet_small at width 16 with
# proj_dim 2048: 0.6 GB), blocks of this size beyond
PROJECTION_BLOCK_BYTES = 2**30
MAX_PROJECTION_DIM = 65_536
# "none": every pretraining image at full weight; "trak": TRAK's 1 - p
LOSS_WEIGHTINGS = ("none", "trak")


class TransferredNetwork(nn.Module):
    """A pretrained network beside its transferred head.

    ``forward`` is the pretraining classifier, or with ``target = True`` the
    transferred classifier on the same features.
    """

    def __init__(self, net: nn.Module, target_head: nn.Linear):
        super().__init__()
        self.net = net
        self.target_head = target_head
        self.target = False

    def forward(self, x):
        features = self.net.features(x)
        return self.target_head(features) if self.target else self.net.head(features)

    def backbone_parameter_names(self):
        """The parameters both classifiers share: all but the two heads."""
        heads = ("net.head.", "target_head.")
        return [name for name, _ in self.named_parameters() if not name.startswith(heads)]


def check_attribution_options(num_models, proj_dim, damping, loss_weighting="none"):
    """``ValueError`` naming the first option out of range."""
    check_int(num_models, "num_models", 1, 1024)
    check_int(proj_dim, "proj_dim", 1, MAX_PROJECTION_DIM)
    check_number(damping, "damping", 0, 1e6)
    check_choice(loss_weighting, "loss_weighting", LOSS_WEIGHTINGS)


def train_attribution_model(
    config: InfluenceConfig, index: int, data: TransferData, sample_mask=None
):
    """Model ``index`` (its seed): pretrained on every pretraining image (or
    those ``sample_mask`` marks), then transferred as ``config.transfer`` says.

    Returns ``{"pretrained": state, "transferred": state}``, two CPU state
    dicts of :class:`TransferredNetwork`: the network as pretrained (the
    pretraining images' gradients) and as transferred (the target images').
    With a linear probe both hold the same backbone.
    """
    everything = np.ones(data.num_pretrain_classes, dtype=bool)
    net, gen, device = pretrain_network(config, index, everything, data, sample_mask)
    t = data.tensors(device)
    train_y = data.train_labels.astype(np.int64)
    if config.transfer == "linear":
        probe = fit_probe(
            net,
            t["train"],
            train_y,
            config.probe_c,
            device,
            config.precision,
            config.probe_max_iter,
        )
        head = probe_layer(probe, net.feature_dim, data.num_target_classes).to(device)
        pretrained = transferred = _cpu_state(TransferredNetwork(net, head))
    else:
        pretrain_head = net.head
        # its target head is unused (zeros of the right shape: no draw from the RNG)
        pretrained = {f"net.{name}": value for name, value in _cpu_state(net).items()}
        pretrained["target_head.weight"] = torch.zeros(data.num_target_classes, net.feature_dim)
        pretrained["target_head.bias"] = torch.zeros(data.num_target_classes)
        head = finetune(config, net, gen, data, device)
        net.head = pretrain_head  # kept for the state's shape; unused on targets
        transferred = _cpu_state(TransferredNetwork(net, head))
    return {"pretrained": pretrained, "transferred": transferred}


def _cpu_state(module):
    return {name: value.detach().to("cpu").clone() for name, value in module.state_dict().items()}


def attribution_network(config: InfluenceConfig, data: TransferData):
    """An untrained :class:`TransferredNetwork` of the run's shapes, in the
    default memory layout (per-sample gradients need no channels-last)."""
    net = network_for(config, data.num_pretrain_classes)
    return TransferredNetwork(net, nn.Linear(net.feature_dim, data.num_target_classes))


def save_model(state, path):
    """Writes a model's states atomically (a killed write leaves no file)."""
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_model(path):
    """A model's states, read with ``weights_only=True`` (never unpickled)."""
    return torch.load(path, map_location="cpu", weights_only=True)


class AttributionModels:
    """The attribution models of a run, one file each in ``folder``; resumable:
    a model whose file exists is never trained again."""

    def __init__(self, folder, num_models):
        self.folder = folder
        self.num_models = num_models

    def path(self, k):
        return os.path.join(self.folder, f"model-{k:04d}.pt")

    def pending(self):
        return [k for k in range(self.num_models) if not os.path.exists(self.path(k))]

    def train_pending(self, config, data, on_model_done: Callable[[int], None] | None = None):
        """Trains and saves every model not yet on disk; returns their indices."""
        pending = self.pending()
        make_dirs(self.folder)
        for k in pending:
            claim(self.folder, os.path.basename(self.path(k)))
            state = train_attribution_model(config, ATTRIBUTION_INDEX_BASE + k, data)
            save_model(state, self.path(k))
            if on_model_done is not None:
                on_model_done(k)
        return pending


def _trak_parts(loss_weighting):
    """``(score computer class, model output)`` for traker: the ridge term
    relative to the Gram matrix's diagonal, and TRAK's margin weighted
    (``"trak"``: ``1 - p``) or not (``"none"``)."""
    from trak.modelout_functions import ImageClassificationModelOutput
    from trak.score_computers import BasicScoreComputer

    class RelativeDamping(BasicScoreComputer):
        """traker's score computer with the ridge term ``damping`` times the mean
        of the Gram matrix's diagonal: the same damping means the same at any
        scale of gradients and any projection dimension."""

        def __init__(self, *args, lambda_reg=0.0, **kwargs):
            super().__init__(*args, lambda_reg=0.0, **kwargs)
            self.relative_damping = lambda_reg

        def get_x_xtx_inv(self, grads, xtx):
            self.lambda_reg = self.relative_damping * float(torch.diagonal(xtx).mean())
            return super().get_x_xtx_inv(grads, xtx)

    class UnweightedMargin(ImageClassificationModelOutput):
        """TRAK's margin with every pretraining image at full weight (no 1 - p)."""

        def get_out_to_loss_grad(self, model, weights, buffers, batch):
            labels = batch[1]
            return torch.ones(len(labels), 1, dtype=torch.float32, device=labels.device)

    task = UnweightedMargin() if loss_weighting == "none" else ImageClassificationModelOutput()
    return RelativeDamping, task


def _trak_projector(grad_dim, proj_dim, seed, device):
    """traker's random projection to ``proj_dim`` (none when the gradients are smaller)."""
    from trak.projectors import BasicProjector, NoOpProjector, ProjectionType

    if grad_dim <= proj_dim:
        return NoOpProjector(grad_dim, 0, seed, ProjectionType.normal, device)
    block = max(1, min(proj_dim, PROJECTION_BLOCK_BYTES // (4 * grad_dim)))
    return BasicProjector(
        grad_dim,
        proj_dim,
        seed,
        ProjectionType.normal,
        device,
        block_size=block,
        dtype=torch.float32,
    )


def trak_scores(
    config: InfluenceConfig,
    data: TransferData,
    models: AttributionModels,
    scratch_dir: str,
    proj_dim: int = 2048,
    damping: float = 0.1,
    batch_size: int = 64,
    on_model_done: Callable[[int], None] | None = None,
    loss_weighting: str = "none",
) -> np.ndarray:
    """``(N, T)`` float32 TRAK scores of the N pretraining images on the T target
    test images, over every model of ``models``.

    ``proj_dim``: the dimension the per-example gradients are projected to (no
    projection when the backbone has fewer parameters); ``damping``: the ridge
    term added to each model's gradient Gram matrix, relative to the mean of
    its diagonal (so it is needed when there are fewer images than dimensions).
    ``loss_weighting``: ``"none"`` (every image at full weight) or ``"trak"``
    (TRAK's ``1 - p``, see the module's docstring).
    ``scratch_dir``: traker's working folder (a new folder; its files are
    intermediate).
    """
    from trak import TRAKer

    RelativeDamping, task = _trak_parts(loss_weighting)
    device = resolve_device(config.device)
    model = attribution_network(config, data).to(device)
    wrt = model.backbone_parameter_names()
    params = dict(model.named_parameters())
    grad_dim = sum(params[name].numel() for name in wrt)
    projector = _trak_projector(grad_dim, proj_dim, config.seed, device)
    root_handlers = list(logging.getLogger().handlers)
    traker = TRAKer(
        model=model,
        task=task,
        train_set_size=len(data.pretrain_labels),
        save_dir=scratch_dir,
        load_from_save_dir=True,  # a new folder: this only lets traker start its files
        device=str(device),
        projector=projector,
        score_computer=RelativeDamping,
        use_half_precision=False,
        grad_wrt=wrt,
        lambda_reg=float(damping),
        logging_level=logging.WARNING,
    )
    # TRAKer calls logging.basicConfig(): without this, every later log line of
    # the process (the demo's, FiftyOne's) would print twice
    for handler in set(logging.getLogger().handlers) - set(root_handlers):
        logging.getLogger().removeHandler(handler)
    t = data.tensors(device)
    pre_x, pre_y = t["pretrain"], t["pretrain_labels"]
    test_x = t["test"]
    test_y = torch.from_numpy(data.test_labels.astype(np.int64)).to(device)
    states = [load_model(models.path(k)) for k in range(models.num_models)]
    for k, state in enumerate(states):
        model.target = False
        traker.load_checkpoint(state["pretrained"], model_id=k)
        for i in range(0, len(pre_y), batch_size):
            batch = (pre_x[i : i + batch_size], pre_y[i : i + batch_size])
            traker.featurize(batch=batch, num_samples=len(batch[1]))
        if on_model_done is not None:
            on_model_done(k)
    traker.finalize_features()
    for k, state in enumerate(states):
        # finalize_features freed the projection matrix and traker rebuilds it
        # only for a new model id: with one model, the first score needs it back
        if not getattr(projector, "proj_matrix_available", True):
            projector.generate_sketch_matrix(projector.generator_states[0])
        model.target = True
        traker.start_scoring_checkpoint(
            exp_name="target",
            checkpoint=state["transferred"],
            model_id=k,
            num_targets=len(test_y),
        )
        for i in range(0, len(test_y), batch_size):
            batch = (test_x[i : i + batch_size], test_y[i : i + batch_size])
            traker.score(batch=batch, num_samples=len(batch[1]))
    scores = traker.finalize_scores(exp_name="target")
    return np.asarray(scores, dtype=np.float32)


def transferred_margins(config: InfluenceConfig, data: TransferData, state) -> np.ndarray:
    """``(T,)`` the transferred classifier's margin on each target test image
    (correct logit minus the log-sum-exp of the others, as TRAK models it)."""
    device = resolve_device(config.device)
    model = attribution_network(config, data).to(device)
    model.load_state_dict(state["transferred"])
    model.target = True
    logits = torch.from_numpy(_eval_batched(model, model, data.tensors(device)["test"], device))
    labels = torch.from_numpy(data.test_labels.astype(np.int64))
    rows = torch.arange(len(labels))
    correct = logits[rows, labels]
    logits[rows, labels] = -torch.inf
    return (correct - logits.logsumexp(dim=1)).numpy()


def scores_name(proj_dim, damping, loss_weighting="none"):
    """The file of the scores for these TRAK options, in a run's store (TRAK's
    weighting keeps the name it had before the option existed)."""
    options = [int(proj_dim), float(damping)]
    if loss_weighting != "trak":
        options.append(loss_weighting)
    return f"scores-{digest(json.dumps(options), length=12)}.npy"


def run_attribution(
    config: InfluenceConfig,
    data: TransferData,
    folder: str,
    num_models: int,
    proj_dim: int = 2048,
    damping: float = 0.1,
    on_model_done: Callable[[int], None] | None = None,
    on_scoring: Callable[[], None] | None = None,
    loss_weighting: str = "none",
) -> str:
    """Trains the attribution models ``folder`` lacks and scores them; returns the
    path of the ``(N, T)`` float32 scores (``np.load(path, mmap_mode="r")``).

    Resumable: trained models are kept one file each; the scores are written
    once, atomically, and reused for the same ``proj_dim`` and ``damping``
    (traker's intermediate files, in a scratch folder, are recomputed).
    """
    check_attribution_options(num_models, proj_dim, damping, loss_weighting)
    make_dirs(folder)
    models = AttributionModels(os.path.join(folder, "models"), num_models)
    models.train_pending(config, data, on_model_done)
    path = os.path.join(folder, scores_name(proj_dim, damping, loss_weighting))
    shape = (len(data.pretrain_labels), len(data.test_labels))
    if os.path.exists(path):
        try:
            if np.load(path, mmap_mode="r").shape == shape:
                return path
        except ValueError:  # a damaged file: scored again below
            pass
    if on_scoring is not None:
        on_scoring()
    scratch = os.path.join(folder, "trak-scratch")
    remove_scratch(scratch)  # what a killed scoring left
    claim(folder, "trak-scratch")
    scores = trak_scores(
        config, data, models, scratch, proj_dim, damping, loss_weighting=loss_weighting
    )
    save_array(folder, os.path.basename(path), scores)
    remove_scratch(scratch)
    return path


def holdout_sample_masks(num_models, num_samples, seed):
    """``(M, N)`` bool: each held-out model's random half of the pretraining images."""
    rng = np.random.default_rng([seed, HOLDOUT_INDEX_BASE])
    keys = rng.random((num_models, num_samples))
    return keys < np.median(keys, axis=1, keepdims=True)


def run_holdout_models(
    config: InfluenceConfig,
    data: TransferData,
    folder: str,
    num_models: int,
    on_model_done: Callable[[int], None] | None = None,
):
    """``(masks, margins)``: ``(M, N)`` the images each held-out model saw and
    ``(M, T)`` its transferred margins on the target test images. Resumable:
    one ``.npy`` of margins per model, written atomically."""
    masks = holdout_sample_masks(num_models, len(data.pretrain_labels), config.seed)
    make_dirs(folder)
    margins = []
    for j, mask in enumerate(masks):
        path = os.path.join(folder, f"margins-{j:04d}.npy")
        if not os.path.exists(path):
            state = train_attribution_model(config, HOLDOUT_INDEX_BASE + j, data, mask)
            margins_j = transferred_margins(config, data, state).astype(np.float32)
            save_array(folder, os.path.basename(path), margins_j)
            if on_model_done is not None:
                on_model_done(j)
        margins.append(np.load(path, allow_pickle=False))
    return masks, np.stack(margins) if margins else np.zeros((0, len(data.test_labels)))
