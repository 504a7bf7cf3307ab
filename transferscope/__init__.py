"""transferscope: which parts of your pretraining data help or hurt your task.

The SDK (one function per job, used by the operators, the demo and the tests)::

    import transferscope as ts
    results = ts.compute_class_influence("glyphs", "digits", "influence")

The engine lives in :mod:`transferscope.compute` (no FiftyOne import).
"""

from .influence import compute_class_influence, field_names, runs_dir
from .views import TransferScopeError

__version__ = "0.1.0"

__all__ = ["compute_class_influence", "field_names", "runs_dir", "TransferScopeError"]
