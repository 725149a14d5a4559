"""``Ensemble``: train N members and a generalist on Ray, then ask for soft targets at any temperature."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .config import TrainConfig, fingerprint
from .data import Split, check_split, materialize
from .errors import ConfigError
from .models import check_output_width
from .runner import Resources, TrainJob, connect_ray, check_feasible, put_splits, train_many
from .soft_targets import Mean, ensemble_probs
from .tracking import Tracker
from .trainer import TrainResult, TrainSpec, epoch_metrics, predict_logits

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
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        output_dir: str | Path = "runs/ensemble",
        tracker: Tracker | None = None,
        parent_run_id: str | None = None,
        run_params: dict | None = None,
        ray_address: str | None = None,
        ray_num_cpus: int | None = None,
        ray_num_gpus: float | None = None,
        show_progress: bool = True,
    ):
        factories = list(members) if isinstance(members, Sequence) else [members] * n_members
        if not factories:
            raise ConfigError("ensemble.members: need at least one member")
        self.member_factories = factories
        self.generalist_factory = generalist
        self.train_config = _as_train_config(train)
        self.generalist_train_config = _as_train_config(generalist_train) if generalist_train else self.train_config
        self.seed = seed
        self.jitter = jitter
        self.resources = Resources(num_cpus, num_gpus)
        self.output_dir = Path(output_dir)
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.run_params = run_params or {}
        self.ray_options = {"address": ray_address, "num_cpus": ray_num_cpus, "num_gpus": ray_num_gpus}
        self.show_progress = show_progress
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
        self.data_fingerprint_ = fingerprint({name: s.fingerprint() for name, s in splits.items()})
        input_shape = tuple(splits["train"].x.shape[1:])
        specs = self._specs()
        for spec in specs:
            check_output_width(spec.model_factory(), input_shape, self.num_classes_, spec.name)

        connect_ray(**self.ray_options)
        check_feasible({spec.name: self.resources for spec in specs})
        jobs = []
        for spec in specs:
            fp = spec.fingerprint(self.data_fingerprint_)
            jobs.append(TrainJob(spec, self.output_dir / f"{spec.name}-{fp}", fp, self.resources))
        self._start_runs(jobs)
        try:
            self.results_ = train_many(jobs, put_splits(splits), show_progress=self.show_progress)
        except BaseException as err:
            self._end_runs("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        self._finish_runs()

        models = []
        for spec, result in zip(specs, self.results_):
            model = spec.model_factory()
            model.load_state_dict(result.state_dict)
            models.append(model.eval())
        self.members_ = models[: len(self.member_factories)]
        self.generalist_ = models[-1] if self.generalist_factory is not None else None
        return self

    def _start_runs(self, jobs: list[TrainJob]) -> None:
        if self.tracker is None:
            return
        for job in jobs:
            tags = {"role": job.spec.role, **job.spec.tags}
            run_id = self.tracker.start_run(job.spec.name, self.parent_run_id, tags)
            self.tracker.log_params(
                run_id, {**self.run_params, "seed": job.spec.seed, "fingerprint": job.fingerprint, **tags}
            )
            self.run_ids_[job.spec.name] = run_id
            job.sink = self.tracker.sink(run_id)

    def _finish_runs(self) -> None:
        if self.tracker is None:
            return
        for result in self.results_:
            run_id = self.run_ids_[result.name]
            if result.reused:
                # Finished in an earlier invocation: copy its curves so this run is complete on its own.
                for record in result.history:
                    self.tracker.log_metrics(run_id, epoch_metrics(record), step=record["epoch"])
            self.tracker.set_tags(run_id, {"reused": result.reused, "resumed_from_epoch": result.resumed_from_epoch})
            # Final scores under their own names, so they never mix with the per-epoch curves.
            final = {("best_" + k if k.startswith("val_") else k): v for k, v in result.metrics.items()}
            self.tracker.log_metrics(run_id, final)
            self.tracker.end_run(run_id, "FINISHED")

    def _end_runs(self, status: str) -> None:
        if self.tracker is not None:
            for run_id in self.run_ids_.values():
                self.tracker.end_run(run_id, status)

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


def _as_train_config(train: TrainConfig | dict | None) -> TrainConfig:
    if isinstance(train, TrainConfig):
        return train
    from .config import validate_config

    return validate_config(TrainConfig, train or {}, "train")


