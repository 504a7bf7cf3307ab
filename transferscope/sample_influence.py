"""``compute_sample_influence``: which pretraining *images* help or hurt the target task.

Example-level attribution with TRAK (see :mod:`transferscope.compute.attribution`),
written back on both datasets like a class-influence run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import fiftyone as fo
import fiftyone.core.utils as fou
import numpy as np

from . import compute as tsc
from . import views as tsv
from .influence_run import SPLIT_DEFAULTS, InfluenceRun, run_dir_for, validate_transfer_request
from .runs import SampleInfluenceConfig, SampleInfluenceResults
from .views import DatasetLike, Progress, TransferScopeError
from .writes import RunWrite

logger = logging.getLogger(__name__)

# damping and the loss weighting: measured on the demo (docs/jobs.md, "Which
# images"); the rest: unmeasured choices
DEFAULT_NUM_MODELS = 4
DEFAULT_PROJ_DIM = 2048
DEFAULT_DAMPING = 0.1
DEFAULT_LOSS_WEIGHTING = "none"
DEFAULT_HOLDOUT_MODELS = 16
# compute_class_influence's arguments that set the transfer problem
SPLIT_ARGUMENTS = tuple(SPLIT_DEFAULTS)
# InfluenceConfig fields of the class-level design only: not a model's training
CLASS_LEVEL_FIELDS = ("num_models", "alpha", "design", "holdout_models", "device")
PROTOCOL_ARGUMENTS = SPLIT_ARGUMENTS + tuple(
    f.name for f in dataclasses.fields(tsc.InfluenceConfig) if f.name not in CLASS_LEVEL_FIELDS
)


def attribution_fingerprint(config, data):
    """What an attribution model's training depends on: the config without its
    class-level design fields, and the data."""
    d = {k: v for k, v in config.to_dict().items() if k not in CLASS_LEVEL_FIELDS}
    return tsc.digests.digest("attribution", json.dumps(d, sort_keys=True), data.fingerprint())


def field_names(key):
    """The fields a sample-influence run writes: (target fields, pretraining fields)."""
    return [f"{key}_helpful", f"{key}_harmful"], [f"{key}_score", f"{key}_rank"]


@tsv.renamed_keywords(run_key="key")
def compute_sample_influence(
    pretrain_dataset: DatasetLike,
    target_dataset: DatasetLike,
    key: str,
    influence_key: str | None = None,
    num_models: int = DEFAULT_NUM_MODELS,
    proj_dim: int = DEFAULT_PROJ_DIM,
    damping: float = DEFAULT_DAMPING,
    loss_weighting: str = DEFAULT_LOSS_WEIGHTING,
    top_k: int = 10,
    holdout_models: int = DEFAULT_HOLDOUT_MODELS,
    device: str = "auto",
    output_dir: str | None = None,
    overwrite: bool = False,
    progress: Progress = None,
    **protocol,
) -> SampleInfluenceResults:
    """Scores how much each pretraining image helps or hurts each target test image.

    Trains ``num_models`` models, each from scratch on every pretraining
    image with its own seed, transfers each to the target train split as a
    class-influence run would, and scores every (pretraining image, target
    test image) pair with TRAK (Park et al., ICML 2023), in its transfer
    variant: gradients of the pretraining and of the transferred classifier,
    both with respect to the backbone. Positive: the pretraining image raises
    the target image's margin (helps); negative: lowers it (hurts).

    Writes, under ``key``:

    - on each pretraining sample: ``<key>_score`` (its mean score over the
      target test split: helpful positive, harmful negative) and
      ``<key>_rank`` (1: the most helpful);
    - on each target test sample: ``<key>_helpful`` and ``<key>_harmful``
      (``fo.Classifications``: its ``top_k`` most helpful / harmful
      pretraining images, each labelled with its class, with ``sample_id``
      and ``score``);
    - the ``(N, T)`` score matrix in the run's store, a ``.npy`` file
      (:meth:`SampleInfluenceResults.scores` opens it memory-mapped);
      deleting the run deletes its fields and its store.

    Args:
        pretrain_dataset, target_dataset: datasets, views or dataset names
        key: a Python identifier naming the run and its fields
        influence_key: a class-influence run on these datasets whose protocol
            (label fields, splits, training settings) this run takes, and
            whose class influence the metrics compare with (the Spearman
            correlation of each class's summed sample scores with it)
        num_models: models to train and score (TRAK's ensemble)
        proj_dim: dimension the per-example gradients are projected to
        damping: the ridge term, relative to the mean of each model's
            gradient Gram matrix diagonal
        loss_weighting: ``"none"`` (every pretraining image at full weight)
            or ``"trak"`` (TRAK's ``1 - p``, which makes images the model
            already fits, such as copies of a target image in their own
            class, count for little)
        top_k: pretraining images per target sample in the helpful / harmful
            fields
        holdout_models: models trained on random halves of the pretraining
            images, for the example-level linear datamodeling score (0: none,
            else at least 3)
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``
        output_dir: the run's store (default: inside the runs directory)
        overwrite: replace an existing run with this key
        progress: ``None``/``True`` for a progress bar, ``False`` for none,
            or ``callable(num_done, num_total)`` (the models, the scoring,
            then the held-out models)
        **protocol: without ``influence_key``, the label field, split and
            training arguments of :func:`compute_class_influence`
            (``train_split``, ``epochs``, ``arch``, ...; its defaults apply)

    Returns:
        a :class:`transferscope.runs.SampleInfluenceResults`
    """
    request = _validate(
        pretrain_dataset,
        target_dataset,
        key,
        influence_key,
        num_models,
        proj_dim,
        damping,
        loss_weighting,
        top_k,
        holdout_models,
        device,
        protocol,
    )
    labelled, config = request.labelled, request.config
    target_root, pretrain_root = labelled.test_view._root_dataset, labelled.pre_view._root_dataset
    target_fields, pretrain_fields = field_names(key)
    data = labelled.decode(config.image_size, config.channels, config.resize)
    store = os.path.join(
        run_dir_for(output_dir, target_root, key),
        attribution_fingerprint(config, data),
    )
    with RunWrite(key, "sample_influence", [target_root, pretrain_root], overwrite) as write:
        write.check_key_free(target_root, target_fields)
        write.check_key_free(pretrain_root, pretrain_fields)
        try:
            tsc.store.check_dir_is_ours(os.path.dirname(store))
        except tsc.ForeignFilesError as e:
            raise TransferScopeError(str(e)) from e
        _mark_store(store, key, str(target_root._doc.id))
        scores_path, holdout = _train_and_score(request, data, store, progress, write)
        scores = np.load(scores_path, mmap_mode="r")
        metrics = _metrics(request, scores, labelled, holdout)
        run_params = dict(
            config.to_dict(),
            **{k: v if isinstance(v, str) else "<view>" for k, v in request.splits.items()},
            pretrain_dataset=pretrain_root.name,
            target_dataset=target_root.name,
            influence_key=influence_key,
            attribution_models=num_models,
            proj_dim=proj_dim,
            damping=damping,
            loss_weighting=loss_weighting,
            top_k=top_k,
            holdout_models=holdout_models,
            output_dir=store,
        )
        results = _stage_write_back(write, labelled, run_params, scores, scores_path, metrics)
        write.commit()
    _remove_other_stores(store, key, str(target_root._doc.id))
    return results


@dataclasses.dataclass
class _Request:
    labelled: object
    config: object
    num_models: int
    proj_dim: int
    damping: float
    loss_weighting: str
    top_k: int
    holdout_models: int
    class_results: object  # the influence_key run's results, or None
    splits: dict  # the label fields and splits, as compute_class_influence names them


def _validate(
    pretrain_dataset,
    target_dataset,
    key,
    influence_key,
    num_models,
    proj_dim,
    damping,
    loss_weighting,
    top_k,
    holdout_models,
    device,
    protocol,
):
    """Everything checked before any image is read or anything is written."""
    tsv.validate_run_key(key)
    try:
        tsc.attribution.check_attribution_options(num_models, proj_dim, damping, loss_weighting)
    except ValueError as e:
        raise TransferScopeError(str(e)) from None
    tsv.check_count(top_k, "top_k")
    tsv.check_count(holdout_models, "holdout_models", 0, 1024)
    if holdout_models in (1, 2):
        raise TransferScopeError("holdout_models must be 0 (no datamodeling score) or at least 3")
    unknown = sorted(set(protocol) - set(PROTOCOL_ARGUMENTS))
    if unknown:
        raise TransferScopeError(
            f"unknown argument(s) {unknown}; compute_sample_influence takes its own "
            f"arguments and these of compute_class_influence: {list(PROTOCOL_ARGUMENTS)}"
        )
    if influence_key is None:
        splits = {name: protocol.pop(name, default) for name, default in SPLIT_DEFAULTS.items()}
        labelled, config = _protocol_request(
            pretrain_dataset, target_dataset, key, device, splits, protocol
        )
        class_results = None
    else:
        if protocol:
            raise TransferScopeError(
                f"{sorted(protocol)}: with influence_key={influence_key!r} the label fields, "
                f"splits and training settings are that run's; pass them without it"
            )
        run = InfluenceRun.load(target_dataset, influence_key, "target_dataset")
        pre = tsv.load_dataset(pretrain_dataset, "pretrain_dataset")._root_dataset
        if run.datasets[0].name != pre.name:
            raise TransferScopeError(
                f"run {influence_key!r} was computed with pretraining dataset "
                f"{run.datasets[0].name!r}, not {pre.name!r}"
            )
        try:
            config = run.training_config_for(device)
            tsc.resolve_device(config.device)
        except (ValueError, RuntimeError) as e:
            raise TransferScopeError(str(e)) from e
        labelled = run.labelled(unchanged_for="compute_sample_influence")
        class_results = run.results
        splits = {name: getattr(class_results.config, name) for name in SPLIT_ARGUMENTS}
    num_pre = len(labelled.pre_ids)
    if top_k > num_pre:
        raise TransferScopeError(
            f"top_k is {top_k} but the pretraining set has {num_pre} labelled images"
        )
    return _Request(
        labelled,
        config,
        num_models,
        proj_dim,
        damping,
        loss_weighting,
        top_k,
        holdout_models,
        class_results,
        splits,
    )


def _protocol_request(pretrain_dataset, target_dataset, key, device, splits, protocol):
    """The transfer problem and training config from compute_class_influence's
    split and training arguments (its defaults for those not given), checked as
    it checks them."""
    # an independent design of the default size: checked, never trained
    config_kwargs = dict(protocol, device=device, design="independent", holdout_models=0)
    request = validate_transfer_request(
        pretrain_dataset, target_dataset, key, *splits.values(), config_kwargs, "auto", "prob", 1
    )
    return request.labelled, request.config


def _train_and_score(request, data, store, progress, write):
    """Trains the models the store lacks, scores, then trains the held-out models
    (resumable). Returns ``(scores path, (masks, margins) or None)``. Progress
    counts the models trained and the scoring, if this call does them."""
    models = tsc.attribution.AttributionModels(os.path.join(store, "models"), request.num_models)
    heldout_dir = os.path.join(store, "heldout")
    heldout_done = sum(
        os.path.exists(os.path.join(heldout_dir, f"margins-{j:04d}.npy"))
        for j in range(request.holdout_models)
    )
    total = request.num_models + 1 + request.holdout_models
    done = request.num_models - len(models.pending()) + heldout_done
    callback = progress if callable(progress) else None
    scored = []
    with fou.ProgressBar(
        total=total,
        start_msg="Training attribution models",
        progress=False if callback is not None else progress,
    ) as bar:
        bar.update(done)

        def step(*_):
            nonlocal done
            done += 1
            bar.update(1)
            write.heartbeat()
            if callback is not None:
                callback(done, total)

        path = tsc.attribution.run_attribution(
            request.config,
            data,
            store,
            request.num_models,
            request.proj_dim,
            request.damping,
            on_model_done=step,
            on_scoring=lambda: scored.append(write.heartbeat()),
            loss_weighting=request.loss_weighting,
        )
        if scored:
            step()
        else:
            done += 1  # the scores were already there
        holdout = None
        if request.holdout_models:
            holdout = tsc.attribution.run_holdout_models(
                request.config, data, heldout_dir, request.holdout_models, on_model_done=step
            )
    return path, holdout


STORE_OWNER = "sample-influence-run.json"


def _mark_store(store, key, target_id):
    """Names the run a store belongs to, so a later run of the same key can
    tell its own old stores from other runs' in a shared output_dir."""
    tsc.store.make_dirs(store)
    path = os.path.join(store, STORE_OWNER)
    if not os.path.exists(path):
        tsc.store.claim(store, STORE_OWNER)
        tsc.store.write_json(path, {"key": key, "target_dataset_id": target_id})


def _remove_other_stores(store, key, target_id):
    """After a commit: this run's stores written for other settings (an overwrite)."""
    run_dir = os.path.dirname(store)
    for name in tsc.store.read_manifest(run_dir):
        path = os.path.join(run_dir, name)
        owner = os.path.join(path, STORE_OWNER)
        if path == store or not os.path.exists(owner):
            continue
        with open(owner) as f:
            if json.load(f) == {"key": key, "target_dataset_id": target_id}:
                tsc.clear_dir(path)


def _metrics(request, scores, labelled, holdout):
    """The run's summary figures: sizes, the datamodeling score on the held-out
    models, and the tie to the class-level run."""
    metrics = {
        "num_models": request.num_models,
        "proj_dim": request.proj_dim,
        "damping": request.damping,
        "loss_weighting": request.loss_weighting,
        "num_pretraining_samples": int(scores.shape[0]),
        "num_target_samples": int(scores.shape[1]),
        "holdout_models": request.holdout_models,
    }
    if holdout is not None:
        masks, margins = holdout
        lds = tsc.estimators.example_datamodeling_score(scores, masks, margins)
        metrics.update(lds=lds["lds"], lds_mean_output=lds["lds_mean_output"])
    if request.class_results is not None:
        from scipy.stats import spearmanr

        classes = list(request.class_results.classes)
        index = {c: i for i, c in enumerate(classes)}
        rows = np.array([index[c] for c in labelled.pre_labels])
        summed = np.bincount(rows, weights=np.asarray(scores).sum(axis=1), minlength=len(classes))
        rho = spearmanr(summed, request.class_results.class_influence).statistic
        metrics["class_spearman"] = float(rho)
    return metrics


def _stage_write_back(write, labelled, run_params, scores, scores_path, metrics):
    """Stages the run's fields on both datasets and registers its two runs."""
    key, top_k = write.key, run_params["top_k"]
    target_root, pretrain_root = labelled.test_view._root_dataset, labelled.pre_view._root_dataset
    target_fields, pretrain_fields = field_names(key)
    pre_ids = [str(i) for i in labelled.pre_ids]
    test_ids = [str(i) for i in labelled.test_ids]
    overall = np.asarray(scores, dtype=np.float64).mean(axis=1)
    rank = np.empty(len(overall), dtype=np.int64)
    rank[np.argsort(-overall, kind="stable")] = np.arange(1, len(overall) + 1)

    score_f, rank_f = pretrain_fields
    write.add_field(pretrain_root, score_f, fo.FloatField)
    write.set_values(
        pretrain_root, score_f, dict(zip(pre_ids, map(float, overall))), view=labelled.pre_view
    )
    write.add_field(pretrain_root, rank_f, fo.IntField)
    write.set_values(
        pretrain_root, rank_f, dict(zip(pre_ids, map(int, rank))), view=labelled.pre_view
    )

    def top(column, most_helpful):
        order = np.argsort(-column if most_helpful else column, kind="stable")[:top_k]
        return fo.Classifications(
            classifications=[
                fo.Classification(
                    label=labelled.pre_labels[i], sample_id=pre_ids[i], score=float(column[i])
                )
                for i in order
            ]
        )

    for field, helpful in zip(target_fields, (True, False)):
        write.add_field(target_root, field, fo.Classifications)
        values = {}
        for t, sample_id in enumerate(test_ids):
            values[sample_id] = top(np.asarray(scores[:, t], dtype=np.float64), helpful)
        write.set_values(target_root, field, values, view=labelled.test_view)
        write.declare_subfield(target_root, field, "classifications.score", fo.FloatField)
        write.declare_subfield(target_root, field, "classifications.sample_id", fo.StringField)

    common = dict(run_params, scores_path=scores_path)
    results = SampleInfluenceResults(
        target_root,
        SampleInfluenceConfig(fields=target_fields, **common),
        key,
        pretrain_ids=pre_ids,
        target_ids=test_ids,
        metrics=metrics,
    )
    write.register(target_root, results.config, results)
    pre_results = SampleInfluenceResults(
        pretrain_root,
        SampleInfluenceConfig(fields=pretrain_fields, **common),
        key,
        pretrain_ids=pre_ids,
        target_ids=test_ids,
        metrics=metrics,
    )
    write.register(pretrain_root, pre_results.config, pre_results)
    return results
