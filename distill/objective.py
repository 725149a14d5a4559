"""The student's training objective: any registered loss against cached or online teacher outputs."""

from __future__ import annotations

import copy
import inspect

import torch
from torch import nn

from ensemble.base.errors import ConfigError
from ensemble.training.objectives import Objective

from .losses import TeacherOutputs, get_loss


class DistillationObjective(Objective):
    """``(student logits, {term: loss})`` with the teacher's targets looked up by sample index or computed online.

    ``cache`` rows are indexed by the example's position in the training split, so shuffling, subsets and
    samplers all find the right targets; ``teacher`` instead runs on the batch itself (augmented inputs).
    """

    def __init__(self, loss: str = "kd", temperature: float = 4.0, alpha: float = 0.9,
                 cache: TeacherOutputs | None = None, teacher: nn.Module | None = None, teacher_id: str = ""):
        # Resolved here, on the driver: an unknown name fails now, and a loss registered by a plugin that only the
        # driver imported travels to the actor with the objective (by value).
        self.loss_fn = get_loss(loss)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.loss, self.temperature, self.alpha = loss, temperature, alpha
        self.cache, self.teacher, self.teacher_id = cache, teacher, teacher_id
        self.device, self.on_device = torch.device("cpu"), isinstance(cache, TeacherOutputs)
        self.label_smoothing = 0.0

    def __call__(self, model, x, y, idx):
        logits = model(x)
        if self.teacher is not None:
            teacher = self.teacher(x, self.temperature)
        elif self.cache is not None:
            # In memory (TeacherOutputs) or on disk (distill.cache.ShardedTargets): both are indexed by sample id.
            teacher = self.cache[idx.to(self.device) if self.on_device else idx.cpu()].to(self.device)
        else:
            teacher = None
        smoothing = {"label_smoothing": self.label_smoothing} if self.label_smoothing else {}
        return logits, self.loss_fn(logits, y, teacher, self.temperature, self.alpha, **smoothing)

    def to(self, device):
        self.device = torch.device(device)
        self.on_device = isinstance(self.cache, TeacherOutputs)  # a cache in memory moves whole; shards stay on disk
        if self.on_device:
            self.cache = self.cache.to(device)
        if self.teacher is not None:
            self.teacher = self.teacher.to(device)
        return self

    def describe(self) -> dict:
        smoothing = {"label_smoothing": self.label_smoothing} if self.label_smoothing else {}
        return {"objective": "distillation", "loss": self.loss, "temperature": self.temperature, "alpha": self.alpha,
                "teacher": self.teacher_id, "online": self.teacher is not None, **smoothing}

    def with_label_smoothing(self, label_smoothing: float) -> "DistillationObjective":
        """Smooths the loss's hard-label term; the loss must take ``label_smoothing`` (the built-in ones do)."""
        if not label_smoothing:
            return self
        if "label_smoothing" not in inspect.signature(self.loss_fn).parameters:
            raise ConfigError(f"train.label_smoothing: student.loss {self.loss!r} takes no label_smoothing argument")
        smoothed = copy.copy(self)
        smoothed.label_smoothing = label_smoothing
        return smoothed
