"""Thin FiftyOne operators: read the form, call the SDK, report progress, reload."""

from .compute_class_influence import ComputeClassInfluence
from .compute_sample_influence import ComputeSampleInfluence
from .evaluate_curation import EvaluateCuration
from .influence_panel import ClassInfluencePanel
from .leakage import DetectLeakage, FindNearDuplicates
from .plan_class_diversity import PlanClassDiversity
from .sample_influence_panel import SampleInfluencePanel
from .subpopulations import ExplainFailures, FindSubpopulations
from .tag_classes import TagClasses
from .tag_samples import TagSamples

OPERATORS = [
    ComputeClassInfluence,
    ComputeSampleInfluence,
    TagClasses,
    TagSamples,
    EvaluateCuration,
    DetectLeakage,
    FindNearDuplicates,
    PlanClassDiversity,
    FindSubpopulations,
    ExplainFailures,
]
PANELS = [ClassInfluencePanel, SampleInfluencePanel]
