"""Specialist stage: covariance K-means groups, dustbin specialists and Eq. 5 combined inference."""

from .api import SpecialistEnsemble, evaluate_combination
from .combine import active_specialists, combine, eq5_objective
from .dustbin import GroupSampler, SpecialistNet, build_specialist, dustbin_correction, dustbin_target_map
from .grouping import class_matrix, cluster_classes, prediction_covariance, resolve_groups

__all__ = [
    "SpecialistEnsemble", "evaluate_combination", "active_specialists", "combine", "eq5_objective",
    "GroupSampler", "SpecialistNet", "build_specialist", "dustbin_correction", "dustbin_target_map",
    "class_matrix", "cluster_classes", "prediction_covariance", "resolve_groups",
]
