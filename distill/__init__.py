"""Distillation stage, the end-to-end pipeline and the ``distill`` command line."""

from .api import Distiller
from .config import Config, load_config
from .losses import LOSSES, TeacherOutputs, register_loss

__all__ = ["Distiller", "Config", "load_config", "LOSSES", "TeacherOutputs", "register_loss"]
