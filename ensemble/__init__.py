"""Ensemble stage: Ray actors train ensemble members and a generalist; soft targets at any temperature."""

from ensemble.api import Ensemble
from ensemble.base.errors import DistillError
from ensemble.data.registry import DATASETS, load_dataset, register_dataset
from ensemble.data.split import DatasetSplits, Split
from ensemble.models import cifar  # noqa: F401 - registers resnet8x4, resnet32x4, wrn_16_2, wrn_40_2
from ensemble.models.registry import MODELS, build_model, register_model
from ensemble.track.tracking import Tracker
from ensemble.training.soft_targets import (arithmetic_mean, ensemble_probs, geometric_mean,
                                            temperature_softmax)

__all__ = [
    "Ensemble", "DatasetSplits", "Split", "load_dataset", "DistillError", "MODELS", "build_model",
    "register_model", "DATASETS", "register_dataset", "arithmetic_mean", "ensemble_probs", "geometric_mean",
    "temperature_softmax", "Tracker",
]
