"""FiftyOne entry point of the @transferscope/transferscope plugin.

FiftyOne loads this file (``py_entry`` in fiftyone.yml) whenever it looks up
operators, so it imports only the light operator classes; torch and the
engine are imported inside ``execute``.
"""

from transferscope.operators import OPERATORS, PANELS


def register(p):
    for operator_cls in OPERATORS + PANELS:
        p.register(operator_cls)
