"""Teachers and their soft targets: the ensemble (either mean), the generalist, or generalist + specialists (Eq. 5).

Targets come from logits cached by sample index when the inputs are not augmented (:class:`TeacherCache`),
and from a teacher module run on each batch when they are (:class:`OnlineTeacher`). Both go through
:func:`teacher_outputs`, so the two paths give the same targets for the same inputs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ensemble.checkpoint import load_verified, save_verified
from ensemble.errors import DataError
from ensemble.soft_targets import ensemble_probs, temperature_softmax
from specialists.combine import active_specialists, combine

from .losses import TeacherOutputs


def teacher_outputs(kind: str, logits: dict, temperature: float, mean: str = "arithmetic",
                    groups: list[list[int]] | None = None, top_n: int = 1) -> TeacherOutputs:
    """Soft targets at ``temperature`` and teacher logits (log-probabilities at T = 1).

    ``logits``: ``{"members": (M, N, C)}`` for the ensemble, ``{"generalist": (N, C)}`` for the generalist, plus
    ``{"specialists": [(N, |S_m|+1), ...]}`` for generalist + specialists, whose soft targets are Eq. 5 applied
    to the tempered distributions (the active specialists come from the generalist's top-n at T = 1).
    """
    if kind == "ensemble":
        members = logits["members"]
        return TeacherOutputs(ensemble_probs(members, temperature, mean),
                              torch.log(ensemble_probs(members, 1.0, mean).clamp_min(1e-30)))
    generalist = logits["generalist"]
    if kind == "generalist":
        return TeacherOutputs(temperature_softmax(generalist, temperature), torch.log_softmax(generalist, 1))
    if kind != "specialists":
        raise ValueError(f"unknown teacher kind {kind!r}")
    group_tensors = [torch.tensor(g) for g in groups]
    active = active_specialists(torch.softmax(generalist, 1), group_tensors, top_n)

    def solve(t: float) -> torch.Tensor:
        p_m = [temperature_softmax(z, t) for z in logits["specialists"]]
        return combine(temperature_softmax(generalist, t), p_m, group_tensors, active)[0]

    return TeacherOutputs(solve(temperature), torch.log(solve(1.0).clamp_min(1e-30)))


class OnlineTeacher(nn.Module):
    """Runs the teacher's models on each (augmented) batch; pickled into the student's actor."""

    def __init__(self, kind: str, generalist: nn.Module | None = None, members: list[nn.Module] = (),
                 specialists: list[nn.Module] = (), groups: list[list[int]] | None = None,
                 mean: str = "arithmetic", top_n: int = 1):
        super().__init__()
        self.kind, self.mean, self.groups, self.top_n = kind, mean, groups, top_n
        self.generalist = generalist
        self.members = nn.ModuleList(members)
        self.specialists = nn.ModuleList(specialists)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, temperature: float) -> TeacherOutputs:
        self.eval()
        logits: dict = {}
        if self.kind == "ensemble":
            logits["members"] = torch.stack([m(x) for m in self.members])
        else:
            logits["generalist"] = self.generalist(x)
            logits["specialists"] = [s(x) for s in self.specialists]
        return teacher_outputs(self.kind, logits, temperature, self.mean, self.groups, self.top_n)


class TeacherCache:
    """Teacher outputs on the training split, row i = example i, stamped with the split's fingerprint."""

    def __init__(self, outputs: TeacherOutputs, fingerprint: str):
        self.outputs = outputs
        self.fingerprint = fingerprint

    def check(self, fingerprint: str, where: str = "teacher cache") -> None:
        if fingerprint != self.fingerprint:
            raise DataError(f"{where}: made for another dataset or split (fingerprint {self.fingerprint}, "
                            f"the transfer data has {fingerprint}); delete it or rerun the teacher")

    def save(self, path: Path) -> None:
        save_verified({"probs": self.outputs.probs, "logits": self.outputs.logits, "fingerprint": self.fingerprint},
                      Path(path))

    @classmethod
    def load(cls, path: Path) -> "TeacherCache | None":
        state = load_verified(Path(path))
        if state is None:
            return None
        return cls(TeacherOutputs(state["probs"], state["logits"]), state["fingerprint"])
