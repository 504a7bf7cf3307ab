"""Argument checks that name the argument, the expected kind and the bounds.

In the spirit of scikit-learn's ``check_scalar``, with the messages this
project's errors use ("<name> must be ...; got <value>").
"""

import math
import numbers


def check_int(value, name, minimum=None, maximum=None, note=""):
    """``value`` as an int, or ``ValueError``: an integer (not a bool) within the bounds
    (``note``: said after the bounds, e.g. what else the argument may be)."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and minimum is not None and value < minimum:
        ok = False
    if ok and maximum is not None and value > maximum:
        ok = False
    if not ok:
        kind = (
            "a positive integer"
            if minimum == 1 and maximum is None
            else f"an integer{_bounds(minimum, maximum)}"
        )
        raise ValueError(f"{name} must be {kind}{note}; got {value!r}")
    return int(value)


def check_number(value, name, low=None, high=None, low_open=False, high_open=False):
    """``value`` as a float, or ``ValueError``: a finite real number (not a bool or a
    string) within the bounds (``low_open``/``high_open``: the bound itself excluded)."""
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f" in {lo or '(-inf'}, {hi or 'inf)'}" if (lo or hi) else ""
        raise ValueError(f"{name} must be a finite number{where}; got {value!r}")
    return float(value)


def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}; got {value!r}")
    return value


def _bounds(minimum, maximum):
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""
