"""The transferscope engine: numpy / torch / scikit-learn, no FiftyOne.

Usable alone::

    from transferscope.compute import InfluenceConfig, TransferData, open_store
    store = open_store("runs/x", config, data)
    run_subset_models(config, data, store)
    est = aggregate_influence(store.masks, store.outputs("prob"))
"""

from .config import InfluenceConfig, TARGET_FUNCTIONS, TRANSFER_MODES
from .curation import (
    ORDERS,
    SELECTION_RULES,
    CurationPlan,
    check_num_removed,
    paired_comparison,
    plan_curation,
    select_classes,
    summarize_curation,
)
from .engine import (
    design_masks,
    open_holdout_store,
    open_retrain_store,
    open_store,
    resolve_design,
    run_holdout_models,
    run_retraining,
    run_subset_models,
)
from .executors import LocalExecutor, ModelsFailedError, RayExecutor, make_executor
from .estimators import (
    ESTIMATORS,
    aggregate_influence,
    benjamini_hochberg,
    check_estimator,
    class_influence,
    estimate_influence,
    linear_datamodeling_score,
    split_half,
    split_half_spearman,
    top_k_classes,
)
from .store import (
    ForeignFilesError,
    ResultsStore,
    StoreCorruptError,
    StoreMismatchError,
    clear_dir,
)
from .subsets import DESIGNS, Design, check_design, make_design, min_models, sample_class_masks
from .nets import check_architecture
from .train import TransferData, resolve_device, train_subset_model

__all__ = [
    "InfluenceConfig",
    "TARGET_FUNCTIONS",
    "design_masks",
    "TRANSFER_MODES",
    "open_store",
    "run_subset_models",
    "open_retrain_store",
    "run_retraining",
    "aggregate_influence",
    "class_influence",
    "split_half_spearman",
    "top_k_classes",
    "ResultsStore",
    "StoreMismatchError",
    "StoreCorruptError",
    "ForeignFilesError",
    "clear_dir",
    "check_design",
    "min_models",
    "sample_class_masks",
    "TransferData",
    "DESIGNS",
    "Design",
    "make_design",
    "resolve_design",
    "ESTIMATORS",
    "estimate_influence",
    "benjamini_hochberg",
    "check_estimator",
    "linear_datamodeling_score",
    "split_half",
    "open_holdout_store",
    "run_holdout_models",
    "check_architecture",
    "resolve_device",
    "train_subset_model",
    "ORDERS",
    "SELECTION_RULES",
    "CurationPlan",
    "check_num_removed",
    "paired_comparison",
    "plan_curation",
    "select_classes",
    "summarize_curation",
    "LocalExecutor",
    "RayExecutor",
    "ModelsFailedError",
    "make_executor",
]
