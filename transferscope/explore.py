"""Views for looking at a class-influence run: the panel's SDK (also usable alone).

ts.explore.class_samples(dataset, "influence", "bold")          # its pretraining samples
ts.explore.most_influenced(dataset, "influence", "bold", k=24)  # the target samples it moves most
"""

import numpy as np

from . import views as tsv
from .influence import load_influence_run, run_datasets
from .views import TransferScopeError


def _check_class(results, class_name):
    if class_name not in results.classes:
        raise TransferScopeError(
            f"{class_name!r} is not a pretraining class of this run; it has "
            f"{len(results.classes)} classes, e.g. {', '.join(results.classes[:5])}"
        )
    return results.classes.index(class_name)


def class_samples(dataset, run_key, class_name):
    """The pretraining samples of ``class_name`` (a view of the pretraining dataset)."""
    _, config = load_influence_run(dataset, run_key)
    pretrain, target = run_datasets(config)
    _check_class(target.load_run_results(run_key, cache=False), class_name)
    return pretrain.match(tsv.label_is(f"{config.pretrain_label_field}.label", class_name))


def most_influenced(dataset, run_key, class_name, k=24, helped=True):
    """The ``k`` target test samples ``class_name`` helps most (``helped=False``:
    hurts most), strongest first (a view of the target dataset)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise TransferScopeError(f"k must be a positive integer; got {k!r}")
    _, config = load_influence_run(dataset, run_key)
    _, target = run_datasets(config)
    results = target.load_run_results(run_key, cache=False)
    row = np.asarray(results.influence)[_check_class(results, class_name)]
    order = np.argsort(-row if helped else row, kind="stable")[:k]
    return target.select([results.target_ids[i] for i in order], ordered=True)
