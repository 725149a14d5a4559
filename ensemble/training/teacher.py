"""The ``Teacher`` protocol: what a student needs from whatever teaches it, and nothing about what kind it is.

A teacher gives soft targets for a batch at temperature T (:meth:`Teacher.online`, a module that can travel to a
Ray actor and run on augmented inputs), its targets for whole splits by sample index when it has them cached
(:meth:`Teacher.cached_outputs`), and a name for tags and fingerprints (:meth:`Teacher.teacher_name`): what any
teacher has. :class:`ensemble.api.Ensemble`, :class:`specialists.api.SpecialistEnsemble` and :class:`ModuleTeacher`
(any ``nn.Module``) implement it; a user's own teacher only has to provide the same three methods. What a
distillation method needs beyond them (FitNets' hint network, top-K targets) is distill's to declare
(:mod:`distill.hints`, :mod:`distill.topk`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from ensemble.data.rows import as_input
from ensemble.data.split import Split
from ensemble.data.streaming import in_order
from ensemble.training.soft_targets import Mean, ensemble_probs, temperature_softmax


@dataclass
class TeacherOutputs:
    """A teacher's targets for some rows. A stage above may add fields (distill's top-K targets): every field is
    indexed and moved alike, so rows and devices work for those too."""

    probs: torch.Tensor | None = None  # (N, C) soft targets at the training temperature
    logits: torch.Tensor | None = None  # (N, C) log-probabilities at T = 1

    @staticmethod
    def cat(parts: Sequence["TeacherOutputs"]) -> "TeacherOutputs":
        return TeacherOutputs(torch.cat([p.probs for p in parts]), torch.cat([p.logits for p in parts]))

    def _map(self, fn) -> "TeacherOutputs":
        return type(self)(**{name: None if value is None else fn(value) for name, value in vars(self).items()})

    def __getitem__(self, rows) -> "TeacherOutputs":
        """The rows of these sample ids (a cache is indexed by sample id)."""
        return self._map(lambda t: t[rows])

    def to(self, device) -> "TeacherOutputs":
        return self._map(lambda t: t.to(device))


@runtime_checkable
class Teacher(Protocol):
    def teacher_name(self) -> str:
        """A short name for tags and fingerprints: ``ensemble``, ``specialists``, ``generalist``, ..."""

    def online(self) -> nn.Module:
        """A picklable module whose ``forward(x, temperature)`` returns :class:`TeacherOutputs` for the batch."""

    def cached_outputs(self, splits: Sequence[Split], temperature: float) -> TeacherOutputs | None:
        """Targets for the rows of ``splits`` concatenated (row i = example i), or None when none are cached."""


def as_teacher(teacher) -> Teacher:
    """``teacher`` itself when it implements :class:`Teacher`; a plain ``nn.Module`` becomes a ModuleTeacher."""
    if isinstance(teacher, Teacher):
        return teacher
    if isinstance(teacher, nn.Module):
        return ModuleTeacher(teacher)
    raise TypeError(f"teacher: expected an nn.Module or an object with teacher_name, online and cached_outputs "
                    f"(the Teacher protocol), got {type(teacher).__name__}")


@torch.no_grad()
def outputs_in_batches(teacher: nn.Module, x: torch.Tensor, temperature: float, batch_size: int = 4096
                       ) -> TeacherOutputs:
    """Run an online teacher over ``x`` a batch at a time."""
    return TeacherOutputs.cat([teacher(as_input(inputs), temperature)
                               for inputs in in_order(x, batch_size)])


class ModuleOutputs(nn.Module):
    """One network's targets: ``softmax(z / T)`` and ``log_softmax(z)``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    @torch.no_grad()
    def forward(self, x: torch.Tensor, temperature: float) -> TeacherOutputs:
        self.eval()
        z = self.module(x)
        return TeacherOutputs(temperature_softmax(z, temperature), torch.log_softmax(z, 1))


class ModuleTeacher:
    """Any ``nn.Module`` as a teacher (the generalist, or a user's own pretrained network)."""

    def __init__(self, module: nn.Module, name: str = "module"):
        self.module = module.eval()
        self.name = name

    def teacher_name(self) -> str:
        return self.name

    def online(self) -> nn.Module:
        return ModuleOutputs(self.module)

    def cached_outputs(self, splits: Sequence[Split], temperature: float) -> TeacherOutputs | None:
        return None

    def hint_module(self) -> nn.Module:  # distill.hints.HintTeacher: a plain network gives its own hints
        return self.module


def members_outputs(members: torch.Tensor, temperature: float, mean: Mean) -> TeacherOutputs:
    """An ensemble's targets from its (M, N, C) member logits: the mean at T, and its log at T = 1."""
    return TeacherOutputs(ensemble_probs(members, temperature, mean),
                          torch.log(ensemble_probs(members, 1.0, mean).clamp_min(1e-30)))


class EnsembleOutputs(nn.Module):
    """The members run on each batch and averaged: what an :class:`ensemble.api.Ensemble` teaches online."""

    def __init__(self, members: Sequence[nn.Module], mean: Mean = "arithmetic"):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.mean = mean

    @torch.no_grad()
    def forward(self, x: torch.Tensor, temperature: float) -> TeacherOutputs:
        self.eval()
        return members_outputs(torch.stack([m(x) for m in self.members]), temperature, self.mean)
