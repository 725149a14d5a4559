"""``Ensemble``: train N members and a generalist on Ray, then ask for soft targets at any temperature."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .config import TrainConfig, fingerprint
from .data import check_split, materialize
from .errors import ConfigError
from .fit import FitOptions, fit_specs
from .soft_targets import Mean, ensemble_probs
from .trainer import TrainResult, TrainSpec, predict_logits

GENERALIST_SEED_OFFSET = 1000


class Ensemble:
    """An ensemble of independently seeded members plus an optional generalist, each trained by a Ray actor.

    >>> ens = Ensemble(lambda: my_net(), n_members=3, generalist=lambda: my_net())
    >>> ens.fit(train, val, test)
    >>> ens.predict_proba(x, temperature=20, mean="geometric")
    """

    def __init__(
        self,
        members: Callable[[], nn.Module] | Sequence[Callable[[], nn.Module]],
        n_members: int = 3,
        generalist: Callable[[], nn.Module] | None = None,
        *,
        train: TrainConfig | dict | None = None,
        generalist_train: TrainConfig | dict | None = None,
        seed: int = 0,
        jitter: int = 0,
        **options,
    ):
        """``options`` are :class:`ensemble.fit.FitOptions`: output_dir, num_cpus, num_gpus, tracker, ..."""
        factories = list(members) if isinstance(members, Sequence) else [members] * n_members
        if not factories:
            raise ConfigError("ensemble.members: need at least one member")
        self.member_factories = factories
        self.generalist_factory = generalist
        self.train_config = as_train_config(train)
        self.generalist_train_config = as_train_config(generalist_train) if generalist_train else self.train_config
        self.seed = seed
        self.jitter = jitter
        self.options = FitOptions(**options)
        self.members_: list[nn.Module] = []
        self.generalist_: nn.Module | None = None
        self.results_: list[TrainResult] = []
        self.run_ids_: dict[str, str] = {}

    # --- training ---

    def _specs(self) -> list[TrainSpec]:
        specs = [
            TrainSpec(f"member_{i}", "member", factory, self.train_config, self.seed + i, self.jitter,
                      tags={"member_index": i})
            for i, factory in enumerate(self.member_factories)
        ]
        if self.generalist_factory is not None:
            specs.append(
                TrainSpec("generalist", "generalist", self.generalist_factory, self.generalist_train_config,
                          self.seed + GENERALIST_SEED_OFFSET, self.jitter)
            )
        return specs

    def fit(self, train, val, test=None, num_classes: int | None = None) -> "Ensemble":
        splits = {"train": materialize(train, "train"), "val": materialize(val, "val")}
        if test is not None:
            splits["test"] = materialize(test, "test")
        self.num_classes_ = num_classes or int(splits["train"].y.max()) + 1
        for name, split in splits.items():
            check_split(split, self.num_classes_, name)
        self.split_fingerprints_ = {name: split.fingerprint() for name, split in splits.items()}
        self.data_fingerprint_ = fingerprint(self.split_fingerprints_)
        fitted = fit_specs(self._specs(), splits, self.data_fingerprint_, self.num_classes_, self.options)
        self.results_, self.run_ids_ = fitted.results, fitted.run_ids
        self.members_ = fitted.models[: len(self.member_factories)]
        self.generalist_ = fitted.models[-1] if self.generalist_factory is not None else None
        return self

    # --- inference ---

    def _check_fitted(self) -> None:
        if not self.members_:
            raise RuntimeError("this Ensemble is not fitted yet; call fit(train, val) first")

    @torch.no_grad()
    def member_logits(self, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        """(M, N, C) logits of every member."""
        self._check_fitted()
        return torch.stack([predict_logits(m, x, batch_size) for m in self.members_])

    def predict_proba(self, x: torch.Tensor, temperature: float = 1.0, mean: Mean = "arithmetic") -> torch.Tensor:
        """The ensemble's soft targets: the arithmetic or geometric mean of the members' ``softmax(z / T)``."""
        return ensemble_probs(self.member_logits(x), temperature, mean)

    def predict(self, x: torch.Tensor, mean: Mean = "arithmetic") -> torch.Tensor:
        return self.predict_proba(x, 1.0, mean).argmax(dim=1)

    def cached_logits(self, split: str) -> dict[str, torch.Tensor]:
        """The logits computed once after training, row i = example i of ``split``: the teacher cache."""
        self._check_fitted()
        return {result.name: result.logits[split] for result in self.results_}

    def soft_targets(self, split: str, temperature: float = 1.0, mean: Mean = "arithmetic") -> torch.Tensor:
        members = [self.cached_logits(split)[f"member_{i}"] for i in range(len(self.members_))]
        return ensemble_probs(torch.stack(members), temperature, mean)

    def evaluate(self, test) -> dict:
        """Accuracy and error count of every member, the generalist and both ensemble means."""
        self._check_fitted()
        split = materialize(test, "test")
        logits = self.member_logits(split.x)
        report: dict = {"members": []}
        for i in range(len(self.members_)):
            report["members"].append(_score(logits[i], split.y))
        for mean in ("arithmetic", "geometric"):
            report[mean] = _score(ensemble_probs(logits, 1.0, mean), split.y)
        if self.generalist_ is not None:
            report["generalist"] = _score(predict_logits(self.generalist_, split.x), split.y)
        return report


def _score(scores: torch.Tensor, y: torch.Tensor) -> dict:
    correct = int((scores.argmax(dim=1) == y).sum())
    return {"accuracy": correct / max(1, len(y)), "errors": len(y) - correct}


def as_train_config(train: TrainConfig | dict | None) -> TrainConfig:
    if isinstance(train, TrainConfig):
        return train
    from .config import validate_config

    return validate_config(TrainConfig, train or {}, "train")


