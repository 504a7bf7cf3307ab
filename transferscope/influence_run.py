"""A class-influence run as the jobs that read it see it: its datasets, its
training config, its results store and its transfer problem, resolved once
(:class:`InfluenceRun`), and the steps every training job shares (labels,
executor, progress, estimation)."""

import collections
import dataclasses
import functools
import logging
import os

import fiftyone.core.utils as fou
import numpy as np

from . import compute as tsc
from . import views as tsv
from .views import TransferScopeError

logger = logging.getLogger(__name__)

DEFAULT_RUNS_DIR = os.path.join(os.path.expanduser("~"), "transferscope", "runs")
# the label fields and splits of a transfer problem, and their defaults
SPLIT_DEFAULTS = {
    "pretrain_label_field": "ground_truth",
    "target_label_field": "ground_truth",
    "train_split": "train",
    "test_split": "test",
    "split_by": "tags",
    "split_field": "split",
}


class InfluenceRun:
    """A class-influence run on a dataset, resolved once for the jobs that read it.

    ``InfluenceRun.load(dataset, key)`` refuses an unknown dataset, an unknown
    key or a run of another kind; the rest is read when first asked for, in
    the order a job asks, so the first problem met is the one reported.
    """

    def __init__(self, root, key, run_config):
        self.root = root  # the dataset it was loaded from (either side of the run)
        self.key = key
        self.run_config = run_config

    @classmethod
    def load(cls, dataset, key, role="dataset"):
        root, run_config = load_influence_run(dataset, key, role)
        return cls(root, key, run_config)

    @functools.cached_property
    def datasets(self):
        """``(pretraining, target)`` root datasets."""
        return run_datasets(self.run_config)

    @functools.cached_property
    def results(self):
        """The run's results, as stored on its target dataset (the full matrix)."""
        return self.datasets[1].load_run_results(self.key, cache=False)

    def results_here(self):
        """The run's results as stored on the dataset it was loaded from."""
        return self.root.load_run_results(self.key, cache=False)

    @functools.cached_property
    def training_config(self):
        """The :class:`InfluenceConfig` its models were trained with."""
        return influence_config_of(self.results)

    def training_config_for(self, device=None):
        """The training config, moved to ``device`` when one is given (a bad device
        raises ``ValueError``)."""
        if device is None:
            return self.training_config
        return tsc.InfluenceConfig.from_dict({**self.training_config.to_dict(), "device": device})

    def store(self):
        """Its results store, refused when missing or incomplete."""
        return complete_store_of(self.results)

    def labelled(self, unchanged_for=None):
        """Its transfer problem, read again from the datasets (see
        :func:`labelled_transfer_of`)."""
        return labelled_transfer_of(self.results, unchanged_for)


@dataclasses.dataclass
class LabelledTransfer:
    """The validated samples and labels of a transfer problem (images not yet read)."""

    pre_view: object
    pre_ids: np.ndarray
    pre_paths: list
    pre_labels: list
    train_ids: np.ndarray
    train_paths: list
    train_labels: list
    test_view: object
    test_ids: np.ndarray
    test_paths: list
    test_labels: list
    classes: list
    target_classes: list

    def detect_channels(self):
        """``(channels, note)`` from every pretraining and train image's header."""
        return tsv.detect_channels(self.pre_paths + self.train_paths)

    def decode(self, image_size, channels, resize="crop"):
        """Every image, decoded (or read from the image cache), as :class:`TransferData`."""
        logger.info(
            "Reading %d images (decoded once, then from the image cache)",
            len(self.pre_paths) + len(self.train_paths) + len(self.test_paths),
        )
        class_index = {c: i for i, c in enumerate(self.classes)}
        target_index = {c: i for i, c in enumerate(self.target_classes)}
        return tsc.TransferData(
            pretrain_images=tsv.decode_images(
                self.pre_paths, self.pre_ids, image_size, channels, resize
            ),
            pretrain_labels=np.array([class_index[l] for l in self.pre_labels]),
            num_pretrain_classes=len(self.classes),
            train_images=tsv.decode_images(
                self.train_paths, self.train_ids, image_size, channels, resize
            ),
            train_labels=np.array([target_index[l] for l in self.train_labels]),
            test_images=tsv.decode_images(
                self.test_paths, self.test_ids, image_size, channels, resize
            ),
            test_labels=np.array([target_index[l] for l in self.test_labels]),
            num_target_classes=len(self.target_classes),
        )


def collect_labels(
    pretrain,
    target,
    pretrain_label_field="ground_truth",
    target_label_field="ground_truth",
    train_split="train",
    test_split="test",
    split_by="tags",
    split_field="split",
):
    """Validates the fields and splits and gathers ids, paths and labels."""
    tsv.check_classification_field(pretrain, pretrain_label_field, "pretraining")
    tsv.check_classification_field(target, target_label_field, "target")
    train_view = tsv.resolve_split(target, train_split, split_by, split_field)
    test_view = tsv.resolve_split(target, test_split, split_by, split_field)
    pre_view = pretrain.exists(pretrain_label_field)
    if len(pre_view) == 0:
        raise TransferScopeError(
            f"the pretraining dataset has no samples with a {pretrain_label_field!r} label"
        )
    pre_ids, pre_paths, pre_labels = tsv.labels_of(pre_view, pretrain_label_field, "pretraining")
    train_ids, train_paths, train_labels = tsv.labels_of(
        train_view, target_label_field, "target train"
    )
    test_ids, test_paths, test_labels = tsv.labels_of(test_view, target_label_field, "target test")
    overlap = np.intersect1d(train_ids, test_ids)
    if len(overlap):
        raise TransferScopeError(
            f"{len(overlap)} sample(s) are in both the train and the test split, "
            f"e.g. {list(overlap[:3])}"
        )
    classes = sorted(set(pre_labels))
    if len(classes) < 2:
        raise TransferScopeError(
            f"need at least 2 pretraining classes in {pretrain_label_field!r}; found {len(classes)}"
        )
    target_classes = sorted(set(train_labels))
    absent = sorted(set(test_labels) - set(target_classes))
    if absent:
        raise TransferScopeError(
            f"the test split has labels absent from the train split: {absent}; "
            f"a transferred model cannot predict them"
        )
    return LabelledTransfer(
        pre_view,
        pre_ids,
        pre_paths,
        pre_labels,
        train_ids,
        train_paths,
        train_labels,
        test_view,
        test_ids,
        test_paths,
        test_labels,
        classes,
        target_classes,
    )


HOLDOUT_DIR = "holdout"
# the false-discovery level the run's summary counts significant classes at
SUMMARY_FDR = 0.1


def open_holdout_store(output_dir, config, data):
    """The run's held-out models' store (in ``<output_dir>/holdout``), or None."""
    if not config.holdout_models:
        return None
    return tsc.open_holdout_store(os.path.join(output_dir, HOLDOUT_DIR), config, data)


def estimate(store, target_function="prob", estimator="auto", holdout=None):
    """Influence matrix, class aggregates (intervals, q-values) and reliability figures."""
    check_store_complete(store)
    masks = store.masks
    outputs = store.outputs(target_function)
    est = tsc.estimate_influence(masks, outputs, estimator)
    agg = tsc.aggregate_influence(masks, outputs, estimator=estimator)
    meta = store.spec.get("meta", {})
    split = tsc.split_half(masks, outputs, meta.get("block_size", 1), estimator)
    correct = store.outputs("correct")
    harmful = (agg.influence < 0) & (agg.q_value < SUMMARY_FDR)
    metrics = {
        "num_models": int(len(masks)),
        "design": meta.get("design", "pairs"),
        "design_note": meta.get("design_note", ""),
        "channels_note": meta.get("channels_note"),
        "estimator": agg.estimator,
        "standard_errors": agg.se_method,
        "target_function": target_function,
        "mean_test_accuracy": float(correct.mean()),
        "model_accuracy_std": float(correct.mean(axis=1).std(ddof=1)),
        "split_half_spearman": split["spearman"],
        "split_half_z_sd": split["z_sd"],
        "num_harmful_at_fdr_0.1": int(harmful.sum()),
    }
    if holdout is not None:
        check_store_complete(holdout)
        lds = tsc.linear_datamodeling_score(
            masks, outputs, holdout.masks, holdout.outputs(target_function), estimator
        )
        metrics.update(
            lds=lds["lds"],
            lds_mean_output=lds["lds_mean_output"],
            num_holdout_models=lds["num_heldout"],
        )
    return dict(
        influence=est.influence,
        stderr=est.stderr,
        class_influence=agg.influence,
        class_stderr=agg.stderr,
        class_ci_low=agg.ci_low,
        class_ci_high=agg.ci_high,
        class_p_value=agg.p_value,
        class_q_value=agg.q_value,
        metrics=metrics,
    )


MATRIX_NAMES = ("influence", "stderr")


def save_matrices(store_path, results_kwargs, target_function, estimator):
    """Moves the ``(C, T)`` matrices of ``results_kwargs`` (from :func:`estimate`)
    into the run's store as float32 ``.npy`` files, one pair per target
    function and estimator; returns ``(matrices, results_kwargs)``, the second
    naming the files (``matrix_paths``) instead of holding the arrays. Other
    matrices in the store (an earlier target function) are removed."""
    tag = tsc.digests.digest(target_function, estimator, length=12)
    matrices = {name: results_kwargs.pop(name) for name in MATRIX_NAMES}
    paths = {
        name: tsc.save_array(store_path, f"{name}-{tag}.npy", matrix.astype(np.float32))
        for name, matrix in matrices.items()
    }
    keep = {os.path.basename(p) for p in paths.values()}
    for name in tsc.store.read_manifest(store_path):
        if name.startswith(tuple(f"{m}-" for m in MATRIX_NAMES)) and name not in keep:
            os.remove(os.path.join(store_path, name))  # ours: the manifest names it
    return matrices, dict(results_kwargs, matrix_paths=paths)


def prepare_executor(executor="local", executor_options=None, config=None):
    """The executor for a job, checked against ``config`` before any work: bad
    options, an unreachable cluster or one without the resources asked for
    are refused here, with the reason."""
    try:
        runner = tsc.make_executor(executor, **(executor_options or {}))
        runner.check(config)
    except (ValueError, TypeError, ImportError, ConnectionError) as e:
        raise TransferScopeError(f"executor {executor!r}: {e}") from e
    return runner


def run_with_progress(stages, progress, start_msg, heartbeat=None):
    """Runs ``run(on_model_done)`` over each ``(store, run)`` stage's pending rows,
    with one progress count over all of them.

    ``stages``: a ``(store, run)`` pair or a list of them. ``progress``:
    ``None``/``True`` for a progress bar (as FiftyOne's config says),
    ``False`` for none, or ``callable(num_done, num_total)``.
    """
    if isinstance(stages, tuple):
        stages = [stages]
    total = sum(len(store.completed) for store, _ in stages)
    already = sum(len(store.completed) - len(store.pending()) for store, _ in stages)
    callback = progress if callable(progress) else None
    # None defers to fo.config.show_progress_bars, as the docstring says
    bar_setting = False if callback is not None else progress
    if already:
        logger.info("Resuming: %d/%d models already trained", already, total)
    done = already
    with fou.ProgressBar(total=total, start_msg=start_msg, progress=bar_setting) as bar:
        bar.update(already)

        def on_model_done(index, stage_done, stage_total):
            nonlocal done
            done += 1
            bar.update(1)
            if heartbeat is not None:
                heartbeat()
            if callback is not None:
                callback(done, total)

        for _, run in stages:
            try:
                run(on_model_done)
            except tsc.ModelsFailedError as e:  # the others are stored; a rerun retries these
                raise TransferScopeError(str(e)) from e


def influence_config_of(results):
    """The :class:`InfluenceConfig` a class-influence run was computed with."""
    # fields added since a run was stored take the value they had then
    before = {"design": "pairs", "holdout_models": 0}
    fields = dataclasses.fields(tsc.InfluenceConfig)
    return tsc.InfluenceConfig(
        **{f.name: getattr(results.config, f.name, before.get(f.name, f.default)) for f in fields}
    )


def labelled_transfer_of(results, unchanged_for=None):
    """The run's transfer problem (same datasets, fields and splits).

    ``unchanged_for``: what the caller is about to do; when given, refuses
    datasets whose classes or test samples changed since the run.
    """
    cfg = results.config
    if str(cfg.train_split).startswith("<view") or str(cfg.test_split).startswith("<view"):
        raise TransferScopeError(
            "this run was computed on views passed from Python; pass the same views again"
        )
    labelled = collect_labels(
        tsv.load_dataset(cfg.pretrain_dataset, "pretrain_dataset"),
        tsv.load_dataset(cfg.target_dataset, "target_dataset"),
        cfg.pretrain_label_field,
        cfg.target_label_field,
        cfg.train_split,
        cfg.test_split,
        cfg.split_by,
        cfg.split_field,
    )
    if unchanged_for and (
        labelled.classes != list(results.classes)
        or labelled.target_classes != list(results.target_classes)
        or [str(i) for i in labelled.test_ids] != list(results.target_ids)
    ):
        raise TransferScopeError(
            f"the datasets of run {results.key!r} changed since it was computed (classes or "
            f"test samples differ); compute the run again before {unchanged_for}"
        )
    return labelled


def influence_run_keys(dataset, pretraining_only=False):
    """The class-influence runs on ``dataset`` (on its pretraining side only, if asked)."""
    keys = []
    for key in dataset.list_runs():
        config = dataset.get_run_info(key).config
        if getattr(config, "method", None) != "class_influence":
            continue
        if pretraining_only and config.pretrain_dataset != dataset.name:
            continue
        keys.append(key)
    return keys


def load_influence_run(dataset, run_key, role="dataset"):
    """``(root dataset, config)`` of a class-influence run on ``dataset``.

    Raises naming the problem: unknown dataset, unknown run key, or a run
    that is not a transferscope class-influence run.
    """
    tsv.validate_run_key(run_key)
    root = tsv.load_dataset(dataset, role)._root_dataset
    if run_key not in root.list_runs():
        known = influence_run_keys(root)
        raise TransferScopeError(
            f"dataset {root.name!r} has no run {run_key!r}; its class-influence runs: {known}"
        )
    config = root.get_run_info(run_key).config
    if getattr(config, "method", None) != "class_influence":
        raise TransferScopeError(
            f"run {run_key!r} on {root.name!r} is not a transferscope class-influence run"
        )
    return root, config


def run_datasets(config):
    """The ``(pretraining, target)`` root datasets a run was computed on."""
    return (
        tsv.load_dataset(config.pretrain_dataset, "the run's pretraining dataset"),
        tsv.load_dataset(config.target_dataset, "the run's target dataset"),
    )


def complete_store_of(results):
    """The run's results store, refused when missing or incomplete."""
    path = results.config.output_dir
    try:
        store = tsc.ResultsStore.load(path)
    except FileNotFoundError:
        raise TransferScopeError(
            f"the results store of run {results.key!r} is missing ({path}); "
            f"run compute_class_influence again with overwrite=True"
        ) from None
    check_store_complete(store)
    return store


def check_store_complete(store):
    if not store.is_complete():
        raise TransferScopeError(
            f"the results store at {store.path} is incomplete "
            f"({int(store.completed.sum())}/{len(store.completed)} models); run "
            f"compute_class_influence again with the same arguments to finish it"
        )


def runs_dir():
    return os.environ.get("TRANSFERSCOPE_RUNS_DIR", DEFAULT_RUNS_DIR)


def run_dir_for(output_dir, target_root, key):
    """The run's directory: ``output_dir``, or inside the runs directory by the
    target dataset's id (never its name, which may hold ``/`` or ``..``)."""
    if output_dir is None:
        root = os.path.realpath(runs_dir())
        path = os.path.realpath(os.path.join(root, str(target_root._doc.id), key))
        if os.path.commonpath([root, path]) != root:  # run keys are identifiers: cannot happen
            raise TransferScopeError(f"store path {path} is outside {root}")
        return path
    if not isinstance(output_dir, str) or not output_dir.strip():
        raise TransferScopeError(
            f"output_dir must name a directory; got {output_dir!r} (an "
            f"empty path would be the working directory)"
        )
    return os.path.abspath(os.path.expanduser(output_dir))


@dataclasses.dataclass
class TransferRequest:
    pretrain: object
    target: object
    labelled: object
    config: object
    design: object
    num_unlabelled: int
    channels_note: str | None = None  # set when the images mix grayscale and colour


def validate_transfer_request(
    pretrain_dataset,
    target_dataset,
    key,
    pretrain_label_field,
    target_label_field,
    train_split,
    test_split,
    split_by,
    split_field,
    config_kwargs,
    estimator,
    target_function,
    top_k,
):
    """Everything a class-influence run (or a job with its protocol) needs checked
    before any work or write, including that the architecture runs at the image
    size and the decoded images fit in memory. ``config_kwargs``: InfluenceConfig
    fields (``channels`` may be None: detected)."""
    tsv.validate_run_key(key)
    pretrain = tsv.load_dataset(pretrain_dataset, "pretrain_dataset")
    target = tsv.load_dataset(target_dataset, "target_dataset")
    if pretrain._root_dataset.name == target._root_dataset.name:
        raise TransferScopeError("pretrain_dataset and target_dataset must differ")
    if target_function not in tsc.TARGET_FUNCTIONS:
        raise TransferScopeError(
            f"target_function must be one of {tsc.TARGET_FUNCTIONS}; got {target_function!r}"
        )
    tsv.check_count(top_k, "top_k")
    known = {f.name for f in dataclasses.fields(tsc.InfluenceConfig)}
    unknown = sorted(set(config_kwargs) - known)
    if unknown:
        raise TransferScopeError(
            f"unknown argument(s) {unknown}; compute_class_influence takes its own "
            f"arguments and these InfluenceConfig fields: {sorted(known)}"
        )
    labelled = collect_labels(
        pretrain,
        target,
        pretrain_label_field,
        target_label_field,
        train_split,
        test_split,
        split_by,
        split_field,
    )
    classes = labelled.classes
    if len(labelled.target_classes) < 2:
        raise TransferScopeError(
            f"the target train split has {len(labelled.target_classes)} class(es) "
            f"({labelled.target_classes}); a transferred classifier needs at least 2"
        )
    channels = config_kwargs.pop("channels", None)
    try:
        config = tsc.InfluenceConfig(channels=channels or 1, **config_kwargs)
        design = tsc.resolve_design(config, len(classes), classes)  # before any image is read
        tsc.check_estimator(design.masks, estimator)
        tsc.resolve_device(config.device)
        config = dataclasses.replace(config, num_models=design.num_models)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TransferScopeError(str(e)) from e
    if design.note:
        logger.warning("%s", design.note)
    channels_note = None
    if channels is None:
        detected, channels_note = labelled.detect_channels()
        config = dataclasses.replace(config, channels=detected)
    num_images = len(labelled.pre_paths) + len(labelled.train_paths) + len(labelled.test_paths)
    check_decoded_size(num_images, config.image_size, config.channels)
    try:
        tsc.check_architecture(config, len(classes))
    except ValueError as e:
        raise TransferScopeError(str(e)) from e
    warn_small_classes(labelled.pre_labels)
    unlabelled = len(pretrain) - len(labelled.pre_ids)
    if unlabelled:
        logger.warning(
            "%d pretraining sample(s) have no %r label and are left out",
            unlabelled,
            pretrain_label_field,
        )
    return TransferRequest(pretrain, target, labelled, config, design, unlabelled, channels_note)


# A pretraining class with fewer samples than this teaches a subset model little,
# so its influence is mostly noise; it is kept, with a warning
MIN_CLASS_SAMPLES = 5


def warn_small_classes(pre_labels):
    """Warns about pretraining classes with fewer than :data:`MIN_CLASS_SAMPLES`
    samples (names them); returns them."""
    counts = collections.Counter(pre_labels)
    small = sorted((c for c, n in counts.items() if n < MIN_CLASS_SAMPLES), key=str)
    if small:
        logger.warning(
            "%d pretraining class(es) have fewer than %d samples (%s): their influence "
            "rests on very little data",
            len(small),
            MIN_CLASS_SAMPLES,
            ", ".join(f"{c!r}: {counts[c]}" for c in small[:10]),
        )
    return small


def check_decoded_size(num_images, image_size, channels):
    """Refuses a decoding that would not fit: the decoded uint8 images must take at
    most half of this machine's memory (they are held in memory while training)."""
    import psutil

    need = num_images * image_size * image_size * channels
    limit = psutil.virtual_memory().total // 2
    if need > limit:
        raise TransferScopeError(
            f"{num_images} images at {image_size}x{image_size}x{channels} take "
            f"{need / 2**30:.1f} GiB decoded, more than half this machine's memory "
            f"({2 * limit / 2**30:.1f} GiB); use a smaller image_size"
        )
