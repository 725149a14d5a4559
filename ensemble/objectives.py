"""Training objectives: ``objective(model, x, y, idx) -> (logits, {"term": loss})``.

Every term in the dict is summed for the backward pass and logged under its own name, so a new
objective (distillation, hints, adversarial terms) is logged without extra code. ``idx`` holds the
examples' positions in their split, which is how cached teacher outputs are looked up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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

    def state_dict(self) -> dict:
        """Trainable state the objective owns (a discriminator and its optimiser), saved in every checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class CrossEntropy(Objective):
    """Hard-label cross-entropy, ``-log softmax(z)_y``: how ensemble members and the generalist are trained."""

    def __call__(self, model, x, y, idx):
        logits = model(x)
        return logits, {"ce": F.cross_entropy(logits, y)}
