"""What a :class:`specialists.api.SpecialistEnsemble` teaches: Eq. 5 applied to tempered distributions."""

from __future__ import annotations

import torch
from torch import nn

from ensemble.training.soft_targets import temperature_softmax
from ensemble.training.teacher import TeacherOutputs

from .combine import active_specialists, combine


def specialist_outputs(generalist_logits: torch.Tensor, specialist_logits: list[torch.Tensor],
                       groups: list[list[int]], temperature: float, top_n: int = 1, **solver) -> TeacherOutputs:
    """Soft targets at T: Eq. 5 on ``softmax(z / T)`` of the generalist and each specialist (rows where a
    specialist is inactive are ignored); the active specialists come from the generalist's top-n at T = 1.
    ``logits`` are ``log q`` of the same combination at T = 1. ``solver``: max_iter, tolerance, solver."""
    group_tensors = [torch.tensor(g) for g in groups]
    active = active_specialists(torch.softmax(generalist_logits, 1), group_tensors, top_n)

    def solve(t: float) -> torch.Tensor:
        p_m = [temperature_softmax(z, t) for z in specialist_logits]
        return combine(temperature_softmax(generalist_logits, t), p_m, group_tensors, active, **solver)[0]

    return TeacherOutputs(solve(temperature), torch.log(solve(1.0).clamp_min(1e-30)))


class SpecialistOutputs(nn.Module):
    """The generalist and its specialists run on each batch and combined by Eq. 5."""

    def __init__(self, generalist: nn.Module, specialists: list[nn.Module], groups: list[list[int]],
                 top_n: int = 1, **solver):
        super().__init__()
        self.generalist = generalist
        self.specialists = nn.ModuleList(specialists)
        self.groups, self.top_n, self.solver = groups, top_n, solver

    @torch.no_grad()
    def forward(self, x: torch.Tensor, temperature: float) -> TeacherOutputs:
        self.eval()
        return specialist_outputs(self.generalist(x), [s(x) for s in self.specialists], self.groups, temperature,
                                  self.top_n, **self.solver)
