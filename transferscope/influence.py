"""``compute_class_influence``: the SDK call behind the operator, demo and tests."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os

import fiftyone as fo

from . import compute as tsc
from . import views as tsv
from .influence_run import (
    estimate,
    open_holdout_store,
    prepare_executor,
    run_dir_for,
    run_with_progress,
    save_matrices,
    validate_transfer_request,
)
from .runs import ClassInfluenceConfig, ClassInfluenceResults
from .views import DatasetLike, Progress, SplitLike, TransferScopeError
from .writes import RunWrite

logger = logging.getLogger(__name__)

# the training defaults live in InfluenceConfig; the signature reads them there
_CONFIG = tsc.InfluenceConfig


def influence_defaults():
    """Every default of :func:`compute_class_influence`, the InfluenceConfig fields it
    passes on included: the one source forms and the CLI read."""
    defaults = {f.name: f.default for f in dataclasses.fields(tsc.InfluenceConfig)}
    signature = inspect.signature(compute_class_influence).parameters.items()
    defaults.update(
        {name: p.default for name, p in signature if p.default is not inspect.Parameter.empty}
    )
    return defaults


def field_names(key):
    """The fields a class-influence run writes: (target fields, pretraining fields)."""
    return (
        [f"{key}_helpful", f"{key}_harmful", f"{key}_accuracy"],
        [f"{key}_influence"],
    )


@tsv.renamed_keywords(run_key="key")
def compute_class_influence(
    pretrain_dataset: DatasetLike,
    target_dataset: DatasetLike,
    key: str,
    pretrain_label_field: str = "ground_truth",
    target_label_field: str = "ground_truth",
    train_split: SplitLike = "train",
    test_split: SplitLike = "test",
    split_by: str = "tags",
    split_field: str = "split",
    num_models: int = _CONFIG.num_models,
    alpha: float = _CONFIG.alpha,
    design: str = _CONFIG.design,
    estimator: str = "auto",
    holdout_models: int = _CONFIG.holdout_models,
    epochs: int = _CONFIG.epochs,
    arch: str = _CONFIG.arch,
    transfer: str = _CONFIG.transfer,
    device: str = _CONFIG.device,
    image_size: int = _CONFIG.image_size,
    channels: int | None = None,
    seed: int = _CONFIG.seed,
    target_function: str = "prob",
    top_k: int = 3,
    output_dir: str | None = None,
    overwrite: bool = False,
    progress: Progress = None,
    executor: str | tsc.Executor = "local",
    executor_options: dict | None = None,
    **train_kwargs,
) -> ClassInfluenceResults:
    """Estimates the influence of each pretraining class on each target test sample.

    Trains ``num_models`` models, each from scratch on a subset of the
    pretraining classes (by default the rows of a folded orthogonal array:
    every class in half the models, every two classes together in a
    quarter), transfers each to the target train split and records its
    outputs on the target test split; then ``Infl[c -> t]`` = the effect on
    target ``t`` of adding class ``c`` (least squares on the masks, which
    equals the paper's difference of means in an orthogonal design; Jain et
    al., CVPR 2023), with standard errors valid for the design and
    Benjamini-Hochberg q-values per class. ``holdout_models`` more models on
    independent random halves give the linear datamodeling score.

    Writes, under ``key``:

    - on each target test sample: ``<key>_helpful`` and ``<key>_harmful``
      (``fo.Classifications``: the ``top_k`` most positive / negative
      pretraining classes, with the score in ``influence``) and
      ``<key>_accuracy`` (fraction of models that classify it correctly);
    - on each pretraining sample: ``<key>_influence``, its class's aggregate
      influence;
    - a run on both datasets (``dataset.load_run_results(key)`` on the
      target dataset returns the full matrix); deleting the run deletes its
      fields.

    Models are written to a resumable store in ``output_dir`` (default
    ``$TRANSFERSCOPE_RUNS_DIR/<target>/<key>``): calling again after a
    crash retrains only the unfinished models.

    Args:
        pretrain_dataset, target_dataset: datasets, views or dataset names
        key: a Python identifier naming the run and its fields
        pretrain_label_field, target_label_field: ``fo.Classification`` fields
        train_split, test_split: the target splits: tag names (``split_by=
            "tags"``), values of ``split_field`` (``"field"``), saved view
            names (``"saved_view"``), or views
        num_models, alpha, design, holdout_models, epochs, arch, transfer,
            device, image_size, seed: see
            :class:`transferscope.compute.InfluenceConfig` (an orthogonal
            design rounds ``num_models`` up to whole blocks: 144 models per
            block for 68 classes; the run's metrics say so)
        estimator: ``"auto"`` (least squares where the design identifies
            it, else the difference of means), ``"regression"`` or
            ``"difference_of_means"`` (the paper's arithmetic)
        channels: 1 or 3; by default 3 when any pretraining or train image
            is in colour (every file's header is read; a mixed set is noted
            in the run's metrics as ``channels_note``), else 1
        target_function: ``"prob"`` (correct-class softmax probability),
            ``"margin"`` or ``"correct"``
        top_k: classes per target sample in the helpful / harmful fields
        overwrite: replace an existing run with this key
        progress: ``None``/``True`` for a progress bar (as FiftyOne's config
            says), ``False`` for none, or ``callable(num_done, num_total)``
        executor: where the models train: ``"local"`` (this process),
            ``"ray"`` (tasks on a Ray cluster; the results are the same) or a
            :mod:`transferscope.compute.executors` executor
        executor_options: options of the named executor, e.g.
            ``{"address": "auto", "cpus_per_model": 1, "gpus_per_model": 0.5}``
            for Ray or ``{"threads": 2, "group_size": 16}`` for local
            (``group_size``: models trained at once; default ``"auto"``: one
            at a time on a CPU, as many as fit in memory on CUDA)
        **train_kwargs: further :class:`InfluenceConfig` fields (``width``,
            ``batch_size``, ``lr``, ``finetune_epochs``, ...)

    Returns:
        a :class:`transferscope.runs.ClassInfluenceResults`
    """
    request = validate_transfer_request(
        pretrain_dataset,
        target_dataset,
        key,
        pretrain_label_field,
        target_label_field,
        train_split,
        test_split,
        split_by,
        split_field,
        dict(
            num_models=num_models,
            alpha=alpha,
            seed=seed,
            arch=arch,
            image_size=image_size,
            channels=channels,
            epochs=epochs,
            transfer=transfer,
            device=device,
            design=design,
            holdout_models=holdout_models,
            **train_kwargs,
        ),
        estimator,
        target_function,
        top_k,
    )
    labelled, config = request.labelled, request.config
    target_root, pretrain_root = request.target._root_dataset, request.pretrain._root_dataset
    runner = prepare_executor(executor, executor_options, config)
    run_dir = run_dir_for(output_dir, target_root, key)
    target_fields, pretrain_fields = field_names(key)

    with RunWrite(key, "class_influence", [target_root, pretrain_root], overwrite) as write:
        write.check_key_free(target_root, target_fields)
        write.check_key_free(pretrain_root, pretrain_fields)
        store, holdout = _train(request, num_models, run_dir, overwrite, runner, progress, write)
        results_kwargs = estimate(store, target_function, estimator, holdout)
        results_kwargs["metrics"]["unlabelled_pretraining_samples"] = request.num_unlabelled
        # what "auto" meant here (a Ray worker resolves it on its own machine)
        results_kwargs["metrics"]["precision"] = tsc.resolve_precision(
            tsc.resolve_device(config.device), config.precision
        )
        matrices, results_kwargs = save_matrices(
            store.path, results_kwargs, target_function, estimator
        )

        # --- write back: staged, then committed at once ----------------------
        run_params = dict(
            config.to_dict(),
            pretrain_dataset=pretrain_root.name,
            target_dataset=target_root.name,
            pretrain_label_field=pretrain_label_field,
            target_label_field=target_label_field,
            train_split=_describe(train_split),
            test_split=_describe(test_split),
            split_by=split_by,
            split_field=split_field,
            target_function=target_function,
            top_k=top_k,
            output_dir=store.path,
            estimator=estimator,
        )
        results = _stage_write_back(
            write,
            labelled,
            run_params,
            results_kwargs,
            matrices["influence"],
            store.outputs("correct"),
            top_k,
        )
        write.commit()
    _remove_other_stores(run_dir, keep=store.path)
    return results


def _train(request, num_models, run_dir, overwrite, runner, progress, write):
    """Decodes the images once and trains the run's models and held-out models
    (resumable); returns their stores."""
    labelled, config = request.labelled, request.config
    data = labelled.decode(config.image_size, config.channels, config.resize)
    meta = {
        "classes": labelled.classes,
        "target_classes": labelled.target_classes,
        "design_note": request.design.note,
        "channels_note": request.channels_note,
        "num_models_requested": num_models,
        "unlabelled_pretraining_samples": request.num_unlabelled,
    }
    store, holdout = _open_stores(run_dir, config, data, meta, overwrite)
    stages = [
        (store, lambda done: tsc.run_subset_models(config, data, store, done, executor=runner))
    ]
    if holdout is not None:
        stages.append(
            (
                holdout,
                lambda done: tsc.run_holdout_models(config, data, holdout, done, executor=runner),
            )
        )
    run_with_progress(stages, progress, "Training subset models", write.heartbeat)
    return store, holdout


def _open_stores(run_dir, config, data, meta, overwrite):
    """The run's store (``<run dir>/<config hash>``) and its held-out store; with
    ``overwrite``, a damaged or mismatched store of the same hash is rebuilt."""
    path = os.path.join(run_dir, config.fingerprint(data.fingerprint()))

    def open_both():
        store = tsc.open_store(path, config, data, meta["classes"], meta=meta)
        return store, open_holdout_store(path, config, data)

    try:
        tsc.store.check_dir_is_ours(run_dir)
        return open_both()
    except (tsc.StoreMismatchError, tsc.StoreCorruptError) as e:
        if not overwrite:
            raise TransferScopeError(f"{e}; pass overwrite=True to rebuild it") from e
        tsc.clear_dir(path)  # only what transferscope wrote there
        return open_both()
    except tsc.ForeignFilesError as e:
        raise TransferScopeError(str(e)) from e


def _remove_other_stores(run_dir, keep):
    """After a commit: the stores of this run directory written for other configs."""
    for name in tsc.store.read_manifest(run_dir):
        path = os.path.join(run_dir, name)
        if os.path.abspath(path) != os.path.abspath(keep) and os.path.exists(
            os.path.join(path, "spec.json")
        ):
            tsc.clear_dir(path)


def _stage_write_back(write, labelled, run_params, results_kwargs, infl, correct, top_k):
    """Stages the run's fields on both datasets and registers its two runs;
    ``infl``: the ``(C, T)`` influence matrix (the results name its file)."""
    classes = labelled.classes
    key = write.key
    test_view = labelled.test_view
    target_root, pretrain_root = test_view._root_dataset, labelled.pre_view._root_dataset
    target_fields, pretrain_fields = field_names(key)
    helpful_idx, harmful_idx = tsc.top_k_classes(infl, top_k)
    helpful_f, harmful_f, acc_f = target_fields
    ids = [str(i) for i in labelled.test_ids]

    def labels(t, idx):
        return fo.Classifications(
            classifications=[
                fo.Classification(label=classes[c], influence=float(infl[c, t])) for c in idx[t]
            ]
        )

    for field, idx in ((helpful_f, helpful_idx), (harmful_f, harmful_idx)):
        write.add_field(target_root, field, fo.Classifications)
        write.set_values(
            target_root, field, {i: labels(t, idx) for t, i in enumerate(ids)}, view=test_view
        )
        # declared, so the App sidebar can filter on it
        write.declare_subfield(target_root, field, "classifications.influence", fo.FloatField)
    write.add_field(target_root, acc_f, fo.FloatField)
    write.set_values(
        target_root, acc_f, dict(zip(ids, map(float, correct.mean(axis=0)))), view=test_view
    )
    class_infl = dict(zip(classes, results_kwargs["class_influence"]))
    write.add_field(pretrain_root, pretrain_fields[0], fo.FloatField)
    write.set_values(
        pretrain_root,
        pretrain_fields[0],
        {str(i): float(class_infl[l]) for i, l in zip(labelled.pre_ids, labelled.pre_labels)},
        view=labelled.pre_view,
    )

    results = ClassInfluenceResults(
        target_root,
        ClassInfluenceConfig(fields=target_fields, **run_params),
        key,
        classes=classes,
        target_classes=labelled.target_classes,
        target_ids=ids,
        **results_kwargs,
    )
    write.register(target_root, results.config, results)
    pre_results = ClassInfluenceResults(
        pretrain_root,
        ClassInfluenceConfig(fields=pretrain_fields, **run_params),
        key,
        classes=classes,
        **{
            k: results_kwargs[k]
            for k in (
                "class_influence",
                "class_stderr",
                "class_ci_low",
                "class_ci_high",
                "class_p_value",
                "class_q_value",
                "metrics",
            )
        },
    )
    write.register(pretrain_root, pre_results.config, pre_results)
    return results


def _describe(split):
    return split if isinstance(split, str) else f"<view of {len(split)} samples>"
