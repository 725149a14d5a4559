"""Training objectives: ``objective(model, x, y, idx) -> (logits, {"term": loss})``.

Every term in the dict is summed for the backward pass and logged under its own name, so a new
objective (distillation, hints, adversarial terms) is logged without extra code. ``idx`` holds the
examples' positions in their split, which is how cached teacher outputs are looked up.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ensemble.base.errors import ConfigError


class Objective:
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "Objective":
        """Move any tensors the objective holds (e.g. a teacher cache) to the training device."""
        return self

    def describe(self) -> dict:
        """What identifies this objective in a checkpoint fingerprint."""
        return {"objective": type(self).__name__}

    def with_label_smoothing(self, label_smoothing: float) -> "Objective":
        """This objective with its hard-label cross-entropy smoothed (``train.label_smoothing``); one that has no
        such term, or cannot smooth it, refuses rather than train unsmoothed."""
        if label_smoothing:
            raise ConfigError(f"train.label_smoothing: the {type(self).__name__} objective does not apply it; set 0")
        return self

    def state_dict(self) -> dict:
        """Trainable state the objective owns (a discriminator and its optimiser), saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class CrossEntropy(Objective):
    """Hard-label cross-entropy, ``-log softmax(z)_y``: how ensemble members and the generalist are trained. With
    label smoothing ε the target is ``(1 − ε)·onehot(y) + ε/C``."""

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, model, x, y, idx):
        logits = model(x)
        return logits, {"ce": F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)}

    def describe(self) -> dict:
        smoothing = {"label_smoothing": self.label_smoothing} if self.label_smoothing else {}
        return {"objective": type(self).__name__, **smoothing}

    def with_label_smoothing(self, label_smoothing: float) -> "CrossEntropy":
        if label_smoothing == self.label_smoothing:
            return self
        smoothed = copy.copy(self)  # a subclass keeps what it adds
        smoothed.label_smoothing = label_smoothing
        return smoothed
