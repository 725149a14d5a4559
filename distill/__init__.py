"""Distillation stage, the end-to-end pipeline and the ``distill`` command line."""

from .config import Config, load_config

__all__ = ["Config", "load_config"]
