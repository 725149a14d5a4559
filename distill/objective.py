"""The student's training objective: any registered loss against cached or online teacher outputs."""

from __future__ import annotations


import torch
from torch import nn

from ensemble.objectives import Objective

from .losses import TeacherOutputs, get_loss


class DistillationObjective(Objective):
    """``(student logits, {term: loss})`` with the teacher's targets looked up by sample index or computed online.

    ``cache`` rows are indexed by the example's position in the training split, so shuffling, subsets and
    samplers all find the right targets; ``teacher`` instead runs on the batch itself (augmented inputs).
    """

    def __init__(self, loss: str = "kd", temperature: float = 4.0, alpha: float = 0.9,
                 cache: TeacherOutputs | None = None, teacher: nn.Module | None = None, teacher_id: str = ""):
        get_loss(loss)  # unknown names fail here, on the driver
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        self.loss, self.temperature, self.alpha = loss, temperature, alpha
        self.cache, self.teacher, self.teacher_id = cache, teacher, teacher_id
        self.device, self.on_device = torch.device("cpu"), isinstance(cache, TeacherOutputs)

    def __call__(self, model, x, y, idx):
        logits = model(x)
        if self.teacher is not None:
            teacher = self.teacher(x, self.temperature)
        elif self.cache is not None:
            # In memory (TeacherOutputs) or on disk (distill.cache.ShardedTargets): both are indexed by sample id.
            teacher = self.cache[idx.to(self.device) if self.on_device else idx.cpu()].to(self.device)
        else:
            teacher = None
        return logits, get_loss(self.loss)(logits, y, teacher, self.temperature, self.alpha)

    def to(self, device):
        self.device = torch.device(device)
        self.on_device = isinstance(self.cache, TeacherOutputs)  # a cache in memory moves whole; shards stay on disk
        if self.on_device:
            self.cache = self.cache.to(device)
        if self.teacher is not None:
            self.teacher = self.teacher.to(device)
        return self

    def describe(self) -> dict:
        return {"objective": "distillation", "loss": self.loss, "temperature": self.temperature, "alpha": self.alpha,
                "teacher": self.teacher_id, "online": self.teacher is not None}
