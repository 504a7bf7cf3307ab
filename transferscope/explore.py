"""Views for looking at influence runs: the panels' SDK (also usable alone).

ts.explore.class_samples(dataset, "influence", "bold")          # its pretraining samples
ts.explore.most_influenced(dataset, "influence", "bold", k=24)  # the target samples it moves most
ts.explore.attributed_images(target, "images", sample_id)       # the images that help it most
ts.explore.images_by_score(pretrain, "images")                  # most harmful images first
"""

from __future__ import annotations

import fiftyone as fo
import numpy as np
from bson import ObjectId

from . import views as tsv
from .influence_run import InfluenceRun
from .runs import load_sample_run
from .views import DatasetLike, TransferScopeError


def _check_class(results, class_name):
    if class_name not in results.classes:
        raise TransferScopeError(
            f"{class_name!r} is not a pretraining class of this run; it has "
            f"{len(results.classes)} classes, e.g. {', '.join(results.classes[:5])}"
        )
    return results.classes.index(class_name)


@tsv.renamed_keywords(run_key="influence_key")
def class_samples(dataset: DatasetLike, influence_key: str, class_name: str) -> fo.DatasetView:
    """The pretraining samples of ``class_name`` (a view of the pretraining dataset)."""
    run = InfluenceRun.load(dataset, influence_key)
    pretrain, _ = run.datasets
    _check_class(run.results, class_name)
    return pretrain.match(tsv.label_is(f"{run.run_config.pretrain_label_field}.label", class_name))


@tsv.renamed_keywords(run_key="influence_key")
def most_influenced(
    dataset: DatasetLike, influence_key: str, class_name: str, k: int = 24, helped: bool = True
) -> fo.DatasetView:
    """The ``k`` target test samples ``class_name`` helps most (``helped=False``:
    hurts most), strongest first (a view of the target dataset)."""
    tsv.check_count(k, "k")
    run = InfluenceRun.load(dataset, influence_key)
    target, results = run.datasets[1], run.results
    row = np.asarray(results.influence)[_check_class(results, class_name)]
    order = np.argsort(-row if helped else row, kind="stable")[:k]
    return target.select([results.target_ids[i] for i in order], ordered=True)


def attributed_images(
    target_dataset: DatasetLike,
    influence_key: str,
    sample_id: str,
    helpful: bool = True,
    k: int | None = None,
) -> fo.DatasetView:
    """The pretraining images of sample-influence run ``influence_key`` that help
    (``helpful=False``: hurt) the target test sample ``sample_id`` most,
    strongest first (a view of the pretraining dataset).

    These are the ``top_k`` images the run wrote on that sample
    (``<key>_helpful`` / ``<key>_harmful``), or the first ``k`` of them.
    """
    root, config = load_sample_run(target_dataset, influence_key, "target dataset")
    if root.name != config.target_dataset:
        raise TransferScopeError(
            f"{root.name!r} is the pretraining dataset of run {influence_key!r}; pass its "
            f"target dataset {config.target_dataset!r}"
        )
    if k is not None:
        tsv.check_count(k, "k")
    if not (isinstance(sample_id, str) and ObjectId.is_valid(sample_id)):
        # a plain string would be looked up as a file path
        raise TransferScopeError(f"sample_id must be a sample's id; got {sample_id!r}")
    field = f"{influence_key}_{'helpful' if helpful else 'harmful'}"
    try:
        labels = root[sample_id][field]
    except KeyError:
        labels = None
    if labels is None:
        raise TransferScopeError(
            f"{sample_id!r} is not a target test sample of run {influence_key!r} on "
            f"{root.name!r} (no {field!r} on it)"
        )
    ids = [c.sample_id for c in labels.classifications][:k]
    return tsv.load_dataset(config.pretrain_dataset, "pretraining dataset").select(
        ids, ordered=True
    )


def images_by_score(
    pretrain_dataset: DatasetLike, influence_key: str, helpful: bool = False
) -> fo.DatasetView:
    """The pretraining images scored by sample-influence run ``influence_key``,
    most harmful first (``helpful=True``: most helpful first)."""
    root, config = load_sample_run(pretrain_dataset, influence_key, "pretraining dataset")
    if root.name != config.pretrain_dataset:
        raise TransferScopeError(
            f"{root.name!r} is the target dataset of run {influence_key!r}; pass its "
            f"pretraining dataset {config.pretrain_dataset!r}"
        )
    field = f"{influence_key}_score"
    return root.exists(field).sort_by(field, reverse=helpful)
