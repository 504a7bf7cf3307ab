"""transferscope: which parts of your pretraining data help or hurt your task.

The SDK (one function per job, used by the operators, the demo and the tests)::

    import transferscope as ts
    results = ts.compute_class_influence("glyphs", "digits", "influence")
    ts.tag_classes("glyphs", "influence")  # harmful at false-discovery level 0.1
    summary = ts.evaluate_curation("digits", "influence", sweep_ks=[4, 8])
    ts.detect_leakage("digits", influence_key="influence")
    ts.find_near_duplicates("glyphs", influence_key="influence")
    plan = ts.plan_class_diversity("digits", "influence", budgets=[500, 1000], full_budget=4000)
    groups = ts.find_subpopulations("digits", "influence", k=2)
    failures = ts.explain_failures("digits", "influence")

The engine lives in :mod:`transferscope.compute` (no FiftyOne import).
"""

from . import faiss_backend as _faiss_backend
from .curation import (
    curation_of,
    evaluate_curation,
    evaluate_sample_curation,
    tag_classes,
    tag_samples,
    untag_classes,
)
from .diversity import plan_class_diversity
from .influence import compute_class_influence, field_names
from .influence_run import runs_dir
from .leakage import detect_leakage, find_near_duplicates
from .sample_influence import compute_sample_influence
from .subpopulations import explain_failures, find_subpopulations
from .views import TransferScopeError

_faiss_backend.register()  # fob.compute_similarity(..., backend="faiss")

__version__ = "0.2.0"

__all__ = [
    "compute_class_influence",
    "compute_sample_influence",
    "evaluate_sample_curation",
    "field_names",
    "runs_dir",
    "TransferScopeError",
    "tag_classes",
    "tag_samples",
    "untag_classes",
    "evaluate_curation",
    "curation_of",
    "detect_leakage",
    "find_near_duplicates",
    "plan_class_diversity",
    "find_subpopulations",
    "explain_failures",
]
