"""Training a specialist (paper §5.2): a dustbin class, half-and-half batches, and the Bayes correction."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ensemble.base.checkpoint import tensor_fingerprint
from ensemble.base.errors import ModelError
from ensemble.models import heads


def dustbin_target_map(group: list[int], num_classes: int) -> torch.Tensor:
    """Dataset label -> specialist output: the k-th class of the group -> k, every other class -> dustbin."""
    mapping = torch.full((num_classes,), len(group), dtype=torch.int64)
    mapping[torch.tensor(group)] = torch.arange(len(group))
    return mapping


def dustbin_correction(natural_share: float, special_share_in_training: float = 0.5) -> float:
    """The log-odds shift added to the dustbin logit after training with oversampled special classes.

    With natural share ``f`` of the group's classes and a training mix with share ``s`` of them, the
    Bayes-consistent correction is ``log((1 − f) / f) − log((1 − s) / s)``; for the paper's 50/50 mix,
    ``log((1 − f) / f)``.
    """
    f, s = natural_share, special_share_in_training
    if not 0 < f < 1 or not 0 < s < 1:
        raise ValueError(f"shares must lie in (0, 1), got natural {f}, training {s}")
    return math.log((1 - f) / f) - math.log((1 - s) / s)


class GroupSampler:
    """Each epoch: every example of the group's classes, plus as many drawn at random from the rest (dustbin).

    Only indices are drawn; the data is never copied. When the rest is smaller, it is drawn with replacement.
    """

    def __init__(self, labels: torch.Tensor, group: list[int]):
        inside = torch.isin(labels, torch.tensor(group))
        self.group = list(group)
        self.inside = torch.nonzero(inside).flatten()
        self.outside = torch.nonzero(~inside).flatten()
        if len(self.inside) == 0 or len(self.outside) == 0:
            raise ModelError(f"specialist for classes {group}: needs training examples inside and outside its group")

    def epoch_order(self, num_examples: int, generator: torch.Generator) -> torch.Tensor:
        n = len(self.inside)
        if len(self.outside) >= n:
            rest = self.outside[torch.randperm(len(self.outside), generator=generator)[:n]]
        else:
            rest = self.outside[torch.randint(len(self.outside), (n,), generator=generator)]
        both = torch.cat([self.inside, rest])
        return both[torch.randperm(len(both), generator=generator)]

    def for_final_fit(self, labels: torch.Tensor, n_train: int) -> "GroupSampler":
        """The same group over train + validation labels (``ensemble.training.final_fit``)."""
        return GroupSampler(labels, self.group)

    def identity(self) -> dict:
        """Which examples lie inside and outside the group name it, not just how many (the repr)."""
        return {"sampler": "group", "group": self.group, "inside": tensor_fingerprint(self.inside),
                "outside": tensor_fingerprint(self.outside)}

    def __repr__(self) -> str:
        return f"GroupSampler(group={self.group}, inside={len(self.inside)}, outside={len(self.outside)})"


HEAD_FIELD = "specialists.head"


def find_head(model: nn.Module, head: str | None = None) -> tuple[str, nn.Linear]:
    """The generalist's classifier layer (:func:`ensemble.models.heads.find_head`), its errors naming
    ``specialists.head``."""
    return heads.find_head(model, head, HEAD_FIELD, "generalist",
                           f"name one with {HEAD_FIELD} (SpecialistEnsemble(head=...))")


class SpecialistNet(nn.Module):
    """The generalist with a new head over the group's classes plus a dustbin.

    The dustbin correction is a buffer, so it is saved with the weights. It is added in eval mode only:
    training batches are drawn 50/50 and must see the uncorrected logits.
    """

    def __init__(self, net: nn.Module, group: list[int], correction: float = 0.0):
        super().__init__()
        self.net = net
        self.register_buffer("group", torch.tensor(group, dtype=torch.int64))
        offset = torch.zeros(len(group) + 1)
        offset[-1] = correction
        self.register_buffer("logit_offset", offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits if self.training else logits + self.logit_offset


def build_specialist(
    generalist_factory: Callable[[], nn.Module],
    generalist_state: dict,
    group: list[int],
    correction: float,
    head: str | None = None,
) -> SpecialistNet:
    """Start from the generalist's weights; the new head's rows for the group are the generalist's rows.

    The dustbin row is the mean of the other classes' rows, with ``log(#other classes)`` added to its bias:
    by Jensen, ``mean_j z_j + log n ≤ logsumexp_j z_j``, so the dustbin starts near (just under) the
    generalist's total log-odds for "some class outside the group".
    """
    net = generalist_factory()
    net.load_state_dict(generalist_state)
    name, old = find_head(net, head)
    others = [c for c in range(old.out_features) if c not in set(group)]
    new = nn.Linear(old.in_features, len(group) + 1, bias=True)
    with torch.no_grad():
        index = torch.tensor(group)
        new.weight[:-1] = old.weight[index]
        new.weight[-1] = old.weight[others].mean(dim=0)
        bias = old.bias if old.bias is not None else torch.zeros(old.out_features)
        new.bias[:-1] = bias[index]
        new.bias[-1] = bias[others].mean() + math.log(len(others))
    net.set_submodule(name, new)
    return SpecialistNet(net, group, correction)
