"""Distillation stage, the end-to-end pipeline and the ``distill`` command line."""

from . import adversarial, hints  # noqa: F401 - they register the fitnets and adversarial methods
from .api import Distiller
from .config import Config, StudentConfig, load_config
from .losses import LOSSES, TeacherOutputs, register_loss
from .method import METHODS, Method, MethodContext, MethodPlan, register_method
from .teachers import TEACHERS, TrainedStages, register_teacher

__all__ = ["Distiller", "Config", "StudentConfig", "load_config", "LOSSES", "TeacherOutputs", "register_loss",
           "METHODS", "Method", "MethodContext", "MethodPlan", "register_method", "TEACHERS", "TrainedStages",
           "register_teacher"]
