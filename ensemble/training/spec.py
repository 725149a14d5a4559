"""What defines one model's training (:class:`TrainSpec`, named on disk by its fingerprint) and what it yields
(:class:`TrainResult`); :mod:`ensemble.training.trainer` runs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Protocol

import torch
from torch import nn

from ensemble.base.identity import fingerprint
from ensemble.models.registry import model_identity
from ensemble.schema.sections import TrainConfig
from ensemble.training.objectives import CrossEntropy, Objective


class Sampler(Protocol):
    """Chooses which training examples an epoch visits, and in which order.

    ``identity()`` names it in the fingerprint: a JSON-able value covering all its state (e.g. a hash of its whole
    index tensor). A sampler without one falls back to its repr.
    """

    def epoch_order(self, num_examples: int, generator: torch.Generator) -> torch.Tensor: ...

    def identity(self) -> dict: ...


def sampler_identity(sampler: Sampler | None):
    identity = getattr(sampler, "identity", None)
    return identity() if callable(identity) else repr(sampler)


@dataclass
class TrainSpec:
    """Everything that defines one model's training; its fingerprint names its folder on disk."""

    name: str
    role: str
    model_factory: Callable[[], nn.Module]
    train: TrainConfig
    seed: int = 0
    jitter: int = 0
    objective: Objective = field(default_factory=CrossEntropy)
    target_map: torch.Tensor | None = None  # dataset label -> model output (e.g. a specialist's dustbin)
    sampler: Sampler | None = None
    tags: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)  # anything else that defines the model, e.g. initial weights
    hflip: bool = False  # mirror a random half of each batch (data.augment.hflip)
    # specs with the same pack train together as one vectorised model (ensemble.training.packing)
    pack: str | None = None

    def __post_init__(self):
        # An objective need not subclass Objective; one without the method gets the base's answer (refuse if asked).
        smoothing = getattr(self.objective, "with_label_smoothing", None) or partial(Objective.with_label_smoothing,
                                                                                      self.objective)
        self.objective = smoothing(self.train.label_smoothing)

    def fingerprint(self, data_fingerprint: str) -> str:
        return fingerprint(
            {
                "model": model_identity(self.model_factory, self.seed),
                "train": self.train.identity(),
                "seed": self.seed,
                "jitter": self.jitter,
                "hflip": self.hflip,
                "objective": self.objective.describe(),
                "target_map": None if self.target_map is None else self.target_map.tolist(),
                "sampler": sampler_identity(self.sampler),
                "data": data_fingerprint,
                "identity": self.identity,
            }
        )


@dataclass
class TrainResult:
    name: str
    role: str
    state_dict: dict[str, torch.Tensor]
    logits: dict[str, torch.Tensor]  # split -> (N, C) logits, row i = example i of that split
    history: list[dict]
    metrics: dict
    reused: bool = False
    resumed_from_epoch: int = 0
    placement: dict = field(default_factory=dict)  # where it trained: node, GPU ids, device (set by the actor)
