"""Views for looking at a class-influence run: the panel's SDK (also usable alone).

ts.explore.class_samples(dataset, "influence", "bold")          # its pretraining samples
ts.explore.most_influenced(dataset, "influence", "bold", k=24)  # the target samples it moves most
"""

from __future__ import annotations

import numpy as np

import fiftyone as fo

from . import views as tsv
from .influence_run import InfluenceRun
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
