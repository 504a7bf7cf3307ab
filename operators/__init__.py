"""Thin FiftyOne operators: read the form, call the SDK, report progress, reload."""

from .compute_class_influence import ComputeClassInfluence

OPERATORS = [ComputeClassInfluence]
