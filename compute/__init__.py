"""The transferscope engine: numpy / torch / scikit-learn, no FiftyOne.

Usable alone::

    from transferscope.compute import InfluenceConfig, TransferData, open_store
    store = open_store("runs/x", config, data)
    run_subset_models(config, data, store)
    est = aggregate_influence(store.masks, store.outputs("prob"))

The names below are imported when first used, so ``import transferscope``
(which the FiftyOne plugin loader repeats at every registry look-up) does not
load torch, and FAISS is loaded only by the calls that search.
"""

import importlib

# module -> the names it exports here
_MODULE_EXPORTS = {
    "config": ("InfluenceConfig", "TARGET_FUNCTIONS", "TRANSFER_MODES"),
    "curation": (
        "ORDERS",
        "SELECTION_RULES",
        "CurationPlan",
        "check_num_removed",
        "paired_comparison",
        "plan_curation",
        "select_classes",
        "summarize_curation",
    ),
    "engine": (
        "design_masks",
        "open_holdout_store",
        "open_retrain_store",
        "open_store",
        "resolve_design",
        "run_holdout_models",
        "run_retraining",
        "run_subset_models",
    ),
    "executors": ("Executor", "LocalExecutor", "ModelsFailedError", "RayExecutor", "make_executor"),
    "estimators": (
        "ESTIMATORS",
        "aggregate_influence",
        "benjamini_hochberg",
        "check_estimator",
        "class_influence",
        "estimate_influence",
        "linear_datamodeling_score",
        "split_half",
        "split_half_spearman",
        "top_k_classes",
    ),
    "store": (
        "ForeignFilesError",
        "ResultsStore",
        "StoreCorruptError",
        "StoreMismatchError",
        "clear_dir",
        "load_array",
        "save_array",
    ),
    "subsets": (
        "DESIGNS",
        "Design",
        "check_design",
        "make_design",
        "min_models",
        "sample_class_masks",
    ),
    "nets": ("check_architecture",),
    "sequential": ("StoppingRule", "VERDICTS", "confidence_sequence", "paired_verdict"),
    "train": ("TransferData", "resolve_device", "resolve_precision", "train_subset_model"),
}
_EXPORTS = {name: module for module, names in _MODULE_EXPORTS.items() for name in names}
_SUBMODULES = (
    "attribution",
    "checks",
    "config",
    "curation",
    "digests",
    "disk",
    "diversity",
    "engine",
    "estimators",
    "executors",
    "grouped",
    "images",
    "neighbors",
    "nets",
    "sequential",
    "store",
    "subpopulations",
    "subsets",
    "train",
)
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
