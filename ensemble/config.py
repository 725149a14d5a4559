"""The ensemble stage's part of the one config schema: its members, its generalist, and the whole stage config that
later stages extend with their own sections (``specialists``, ``student``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ensemble.base.fields import OutputPath
from ensemble.schema.sections import (
    DataConfig,
    ModelConfig,
    RayConfig,
    ResourcesConfig,
    Section,
    TrackingConfig,
    TrainConfig,
)


class EnsembleConfig(Section):
    members: int = Field(3, ge=1)
    mean: Literal["arithmetic", "geometric"] = "arithmetic"
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="mlp", params={"hidden": [128, 128]}))
    train: TrainConfig = Field(default_factory=TrainConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    pack: int = Field(1, ge=1, description="members trained together in one actor as one vectorised model (one "
                      "batch order per pack; see ensemble/training/packing.py); resources are per pack")


class GeneralistConfig(Section):
    enabled: bool = True
    model: ModelConfig | None = Field(None, description="defaults to ensemble.model")
    train: TrainConfig | None = Field(None, description="defaults to ensemble.train")


class StageConfig(Section):
    seed: int = 0
    output_dir: OutputPath = "runs/digits"
    data: DataConfig = Field(default_factory=DataConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    generalist: GeneralistConfig = Field(default_factory=GeneralistConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def generalist_model(self) -> ModelConfig:
        return self.generalist.model or self.ensemble.model

    def generalist_train(self) -> TrainConfig:
        return self.generalist.train or self.ensemble.train
