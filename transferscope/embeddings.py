"""Embeddings of FiftyOne samples from one of three sources.

- ``run_key``: the backbone of a class-influence run (one network pretrained
  on every pretraining class with the run's protocol; trained once, cached
  next to the run's models);
- ``embeddings_field``: vectors the user already stored on the samples;
- ``model``: a torchvision architecture by name with weights the user has
  locally (``weights_path``; nothing is downloaded).
"""

import dataclasses
import logging
import os

import numpy as np

from . import compute as tsc
from . import views as tsv
from .compute.digests import file_digest, pixel_digest
from .compute.matching import THUMB
from .compute.neighbors import as_vectors
from .views import TransferScopeError

logger = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass
class Embedded:
    """Sample ids, their vectors, and (where known) their class labels."""

    ids: np.ndarray
    vectors: np.ndarray
    labels: list = None


def from_field(view, field, role):
    """The vectors stored in ``field``; refuses a missing field or vector."""
    if len(view) == 0:
        raise TransferScopeError(f"the {role} samples are empty")
    root = view._root_dataset
    if not root.has_sample_field(field):
        raise TransferScopeError(
            f"the {role} dataset {root.name!r} has no embeddings field {field!r}"
        )
    ids, vectors = view.values(["id", field])
    missing = [i for i, v in zip(ids, vectors) if v is None]
    if missing:
        raise TransferScopeError(
            f"{len(missing)} {role} sample(s) have no {field!r} embedding, e.g. {missing[:3]}"
        )
    lengths = {np.asarray(v).size for v in vectors}
    if len(lengths) > 1:
        raise TransferScopeError(
            f"the {role} embeddings in {field!r} have different lengths: {sorted(lengths)[:5]}"
        )
    try:
        arr = as_vectors(
            np.stack([np.asarray(v, dtype=np.float32).ravel() for v in vectors]),
            f"the {role} embeddings {field!r}",
            ids,
        )
    except ValueError as e:
        raise TransferScopeError(str(e)) from e
    return Embedded(np.asarray(ids), arr)


def from_model(view, arch, weights_path, role, image_size=64, device="auto", batch_size=256):
    """Features of a torchvision model (its head removed) on RGB images."""

    if len(view) == 0:
        raise TransferScopeError(f"the {role} samples are empty")
    if weights_path is not None:
        weights_path = resolve_weights_path(weights_path)
    else:
        logger.warning("model %r without weights_path: randomly initialised features", arch)
    try:
        tsc.nets.torchvision_builder(arch)
    except ValueError as e:  # unknown arch
        raise TransferScopeError(f"cannot build model {arch!r}: {e}") from e
    try:
        net = tsc.nets.FeatureExtractor(arch, weights_path)
    except Exception:  # noqa: BLE001 - torch's message could show the file's content
        raise TransferScopeError(
            f"{os.path.basename(weights_path)!r} in the models directory is not a state "
            f"dict of {arch!r} (a torch.save file of its tensors)"
        ) from None
    ids, paths = view.values(["id", "filepath"])
    images = tsv.decode_images(paths, ids, image_size, 3)
    dev = tsc.resolve_device(device)
    net = tsc.nets.place_network(net, dev)
    vectors = tsc.train.embed_images(net, images, dev, (IMAGENET_MEAN, IMAGENET_STD), batch_size)
    return Embedded(np.asarray(ids), vectors)


MODELS_DIR_ENV = "TRANSFERSCOPE_MODELS_DIR"


def models_dir():
    """Where weights files may be read from (``$TRANSFERSCOPE_MODELS_DIR``, default
    ``~/transferscope/models``): a form names a file there, never a path elsewhere."""
    return os.path.realpath(
        os.environ.get(MODELS_DIR_ENV)
        or os.path.join(os.path.expanduser("~"), "transferscope", "models")
    )


def resolve_weights_path(weights_path):
    """The real path of ``weights_path`` (relative to the models directory, or an
    absolute path inside it); refuses anything else without saying whether it
    exists."""
    root = models_dir()
    if not isinstance(weights_path, str) or not weights_path.strip():
        raise TransferScopeError(
            f"weights_path must name a file in the models directory "
            f"{root} (set {MODELS_DIR_ENV} to change it)"
        )
    path = os.path.realpath(os.path.join(root, os.path.expanduser(weights_path)))
    if os.path.commonpath([root, path]) != root:
        raise TransferScopeError(
            f"weights_path must name a file in the models directory "
            f"{root} (set {MODELS_DIR_ENV} to change it)"
        )
    if not os.path.isfile(path):
        raise TransferScopeError(
            f"no weights file {os.path.relpath(path, root)!r} in the models directory {root}"
        )
    return path


def from_run(run, device=None, labelled=None, data=None, with_train=False):
    """``(pretraining, target test)`` embeddings from the backbone of a class-influence
    run (an :class:`~transferscope.influence_run.InfluenceRun`); with
    ``with_train``, ``(pretraining, target test, target train)``.

    ``labelled`` and ``data``: the run's transfer problem and its decoded
    images, when the caller has them already (decoded at the run's size).
    """
    config = run.training_config_for(device)
    if labelled is None:
        labelled = run.labelled()
    if data is None:
        data = labelled.decode(config.image_size, config.channels, config.resize)
    net, dev = tsc.engine.load_or_train_backbone(
        config, data, os.path.join(run.results.config.output_dir, "backbone")
    )
    norm = data.normalisation()
    pre = Embedded(
        np.asarray(labelled.pre_ids, dtype=str),
        tsc.train.embed_images(net, data.pretrain_images, dev, norm),
        list(labelled.pre_labels),
    )
    test = Embedded(
        np.asarray(labelled.test_ids, dtype=str),
        tsc.train.embed_images(net, data.test_images, dev, norm),
        list(labelled.test_labels),
    )
    if not with_train:
        return pre, test
    train = Embedded(
        np.asarray(labelled.train_ids, dtype=str),
        tsc.train.embed_images(net, data.train_images, dev, norm),
        list(labelled.train_labels),
    )
    return pre, test, train


def content_hashes(view, pixels=False):
    """SHA-256 of each sample's file (exact duplicates share one); with
    ``pixels``, of its decoded pixels (re-encoded copies share one too)."""
    import concurrent.futures

    ids, paths = view.values(["id", "filepath"])
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        hashes = list(pool.map(_or_none(pixel_digest if pixels else file_digest), paths))
    return dict(zip(ids, hashes))


def thumbnails(view, ids):
    """Grey ``THUMB`` x ``THUMB`` thumbnails (uint8) of the samples ``ids`` of
    ``view``, in that order; an unreadable file gives a blank one (it matches nothing)."""
    import concurrent.futures

    path_of = dict(zip(*view.values(["id", "filepath"])))
    blank = np.zeros((THUMB, THUMB), np.uint8)

    def load(path):
        from PIL import Image

        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("L").resize((THUMB, THUMB), Image.BILINEAR))
        except (OSError, ValueError):
            return blank

    paths = [path_of[str(i)] for i in ids]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return np.stack(list(pool.map(load, paths))) if paths else np.zeros((0, THUMB, THUMB))


def _or_none(fn):
    def call(x):
        try:
            return fn(x)
        except (OSError, ValueError):  # unreadable or undecodable files have no hash
            return None

    return call
