"""``Ensemble``: train N members and a generalist on Ray, then ask for soft targets at any temperature."""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn

from ensemble.base.errors import ConfigError
from ensemble.config import EnsembleConfig
from ensemble.data.split import Split
from ensemble.engine.estimator import Estimator
from ensemble.engine.fit import FitOptions, fit_specs
from ensemble.metrics.quality import check as check_quality
from ensemble.metrics.scores import Evaluation, Score
from ensemble.schema.loading import validate_config
from ensemble.schema.sections import TrainConfig
from ensemble.training.soft_targets import Mean, ensemble_probs
from ensemble.training.teacher import EnsembleOutputs, TeacherOutputs, members_outputs
from ensemble.training.trainer import TrainSpec, predict_logits

GENERALIST_SEED_OFFSET = 1000


def pack_of(i: int, members: int, pack: int, seed: int) -> dict:
    """Member i's pack (``ensemble.pack``): consecutive members share one; its size and order seed (the first
    member's seed) are part of each member's identity, since packed training is not separate training."""
    first = i - i % pack
    size = min(pack, members - first)
    if size == 1:
        return {}
    return {"pack": f"pack_{first // pack}", "identity": {"pack": {"size": size, "order_seed": seed + first}}}


class Ensemble(Estimator):
    """An ensemble of independently seeded members plus an optional generalist, each trained by a Ray actor.

    Takes the config's ``ensemble`` section whole (:class:`ensemble.config.EnsembleConfig`, a dict, or keywords that
    name its fields: ``n_members`` for ``members``, ``train``, ``mean``, ...), so the CLI and the API share one mapping.

    >>> ens = Ensemble(lambda: my_net(), {"members": 3, "train": {"epochs": 10}}, generalist=lambda: my_net())
    >>> ens.fit(train, val, test)
    >>> ens.predict_proba(x, temperature=20, mean="geometric")
    """

    schema, section, aliases = EnsembleConfig, "ensemble", {"n_members": "members"}
    fitted_attribute = "members_"

    def __init__(
        self,
        members: Callable[[], nn.Module] | Sequence[Callable[[], nn.Module]],
        config: EnsembleConfig | dict | None = None,
        *,
        generalist: Callable[[], nn.Module] | None = None,
        generalist_train: TrainConfig | dict | None = None,
        seed: int = 0,
        jitter: int = 0,
        hflip: bool = False,
        options: FitOptions | None = None,
        **kwargs,
    ):
        """``options``: where and how the models train (:class:`ensemble.engine.fit.FitOptions`; by default
        ``runs/ensemble`` on the section's resources). Keywords that are not fields of the section name fields of
        ``options``: output_dir, num_cpus, num_gpus, tracking_uri, experiment, ..."""
        self._configure(config, kwargs, options, seed=seed)
        if isinstance(members, Sequence):
            self.config = self.config.model_copy(update={"members": len(members)})
        factories = list(members) if isinstance(members, Sequence) else [members] * self.config.members
        if not factories:
            raise ConfigError("ensemble.members: need at least one member")
        self.member_factories = factories
        self.generalist_factory = generalist
        self.train_config = self.config.train
        self.generalist_train_config = as_train_config(generalist_train) if generalist_train else self.train_config
        self.mean = self.config.mean
        self.jitter, self.hflip = jitter, hflip
        self.members_: list[nn.Module] = []
        self.generalist_: nn.Module | None = None

    # --- training ---

    def _specs(self) -> list[TrainSpec]:
        specs = [
            TrainSpec(f"member_{i}", "member", factory, self.train_config, self.seed + i, self.jitter,
                      tags={"member_index": i}, hflip=self.hflip, **pack_of(i, len(self.member_factories),
                                                                              self.config.pack, self.seed))
            for i, factory in enumerate(self.member_factories)
        ]
        if self.generalist_factory is not None:
            specs.append(
                TrainSpec("generalist", "generalist", self.generalist_factory, self.generalist_train_config,
                          self.seed + GENERALIST_SEED_OFFSET, self.jitter, hflip=self.hflip)
            )
        return specs

    def fit(self, train, val, test=None, num_classes: int | None = None) -> "Ensemble":
        """Each split an ``(x, y)`` pair of arrays or tensors, a :class:`Split` or a map-style dataset
        (:mod:`ensemble.data.inputs`); ``num_classes`` defaults to the largest training label + 1."""
        splits, self.data_fingerprint_ = self._fit_data(train, val, test,
                                                        lambda s: num_classes or int(s["train"].y.max()) + 1)
        with self._tracking() as options:
            fitted = fit_specs(self._specs(), splits, self.data_fingerprint_, self.num_classes_, options)
        self.results_, self.run_ids_ = fitted.results, fitted.run_ids
        self.members_ = fitted.models[: len(self.member_factories)]
        self.generalist_ = fitted.models[-1] if self.generalist_factory is not None else None
        self.quality_ = check_quality(self.results_, splits, self.num_classes_)  # warns of a model at chance
        return self

    # --- inference ---

    @torch.no_grad()
    def member_logits(self, x, batch_size: int = 2048) -> torch.Tensor:
        """(M, N, C) logits of every member."""
        x = self._inputs(x)
        return torch.stack([predict_logits(m, x, batch_size) for m in self.members_])

    def predict_proba(self, x, temperature: float = 1.0, mean: Mean | None = None) -> torch.Tensor:
        """The ensemble's soft targets: the arithmetic or geometric mean (default: the section's ``mean``) of the
        members' ``softmax(z / T)``; ``x`` an array or tensor shaped like the training inputs. ``predict(x, mean=)``
        is its argmax."""
        return ensemble_probs(self.member_logits(x), temperature, mean or self.mean)

    def cached_logits(self, split: str) -> dict[str, torch.Tensor]:
        """The logits computed once after training, row i = example i of ``split``: the teacher cache."""
        self._check_fitted()
        return {result.name: result.logits[split] for result in self.results_}

    def soft_targets(self, split: str, temperature: float = 1.0, mean: Mean | None = None) -> torch.Tensor:
        return ensemble_probs(self._cached_members(split), temperature, mean or self.mean)

    def _cached_members(self, split: str) -> torch.Tensor:
        cached = self.cached_logits(split)
        return torch.stack([cached[f"member_{i}"] for i in range(len(self.members_))])

    # --- the Teacher protocol (ensemble.training.teacher) ---

    def teacher_name(self) -> str:
        return "ensemble"

    def online(self) -> nn.Module:
        self._check_fitted()
        return EnsembleOutputs(self.members_, self.mean)

    def cached_outputs(self, splits: Sequence[Split], temperature: float) -> TeacherOutputs | None:
        """From the logits cached after training, when every split is one the ensemble was fitted on."""
        self._check_fitted()
        names = {fp: name for name, fp in self.split_fingerprints_.items()}
        parts = [names.get(split.fingerprint()) for split in splits]
        if None in parts:
            return None
        members = torch.cat([self._cached_members(part) for part in parts], dim=1)
        return members_outputs(members, temperature, self.mean)

    def hint_module(self) -> nn.Module:  # distill.hints.HintTeacher: FitNets reads hints from the first member
        self._check_fitted()
        return self.members_[0]

    def with_mean(self, mean: Mean) -> "Ensemble":
        """The same fitted ensemble, averaging its members by the other mean."""
        other = copy.copy(self)
        other.mean = mean
        return other

    def evaluate(self, test) -> Evaluation:
        """A :class:`Score` for every member, both ensemble means and the generalist."""
        split = self._test_split(test)
        logits = self.member_logits(split.x)
        scores = {f"member_{i}": Score.from_logits(logits[i], split.y) for i in range(len(self.members_))}
        for mean in ("arithmetic", "geometric"):
            scores[mean] = Score.from_probs(ensemble_probs(logits, 1.0, mean), split.y)
        if self.generalist_ is not None:
            scores["generalist"] = Score.from_logits(predict_logits(self.generalist_, split.x), split.y)
        return Evaluation(scores)


def as_train_config(train: TrainConfig | dict | None) -> TrainConfig:
    if isinstance(train, TrainConfig):
        return train

    return validate_config(TrainConfig, train or {}, "train")


