"""Ensemble stage: Ray actors train ensemble members and a generalist; soft targets at any temperature."""

from . import cifar_models  # noqa: F401 - registers resnet8x4, resnet32x4, wrn_16_2, wrn_40_2
from .api import Ensemble
from .data import DatasetSplits, Split, load_dataset
from .errors import DistillError
from .models import MODELS, build_model, register_model
from .soft_targets import arithmetic_mean, ensemble_probs, geometric_mean, temperature_softmax
from .tracking import Tracker

__all__ = [
    "Ensemble", "DatasetSplits", "Split", "load_dataset", "DistillError", "MODELS", "build_model",
    "register_model", "arithmetic_mean", "ensemble_probs", "geometric_mean", "temperature_softmax", "Tracker",
]
