"""The one config schema of the whole pipeline, composed from each stage's sections."""

from __future__ import annotations

from pathlib import Path

from typing import Literal

from pydantic import Field, field_validator, model_validator

from ensemble.config import (
    ModelConfig, ResourcesConfig, Section, StageConfig, TrainConfig, dump_config, fingerprint, load_config as _load,
)
from specialists.config import SpecialistsConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "digits.yaml"


class TransferConfig(Section):
    fraction: float = Field(1.0, gt=0, le=1, description="seeded share of the training split (the paper's 3%)")
    omit_classes: list[int] = Field(default_factory=list, description="classes left out (the paper's 'no 3s')")
    only_classes: list[int] | None = Field(None, description="keep only these classes (the paper's 7s and 8s)")


class FitNetsConfig(Section):
    hint_layer: str = Field(..., description="teacher layer giving the hint, by module name, e.g. '3'")
    guided_layer: str = Field(..., description="student layer it guides, by module name, e.g. '2'")
    epochs: int = Field(5, gt=0, description="stage 1 (hint) epochs; stage 2 uses student.train")
    kernel_size: int = Field(3, gt=0, description="regressor kernel for convolutional features (odd)")


class AdversarialConfig(Section):
    variant: Literal["pretrained", "gan", "wgan"] = "gan"
    alpha: float = Field(0.1, ge=0, description="weight of the adversarial term (0.1: at 1 it swamps the labels)")
    beta: float = Field(1.0, ge=0, description="weight of the hard-label cross-entropy")
    gamma: float = Field(1.0, gt=0, description="scale of the discriminator's loss")
    lr: float = Field(1e-3, gt=0, description="discriminator learning rate (Adam)")
    hidden: int = Field(64, gt=0, description="discriminator hidden units")
    pretrain_steps: int = Field(200, ge=0, description="'pretrained': batches before the discriminator freezes")
    gp_weight: float = Field(10.0, ge=0, description="'wgan': gradient-penalty weight (the Lipschitz constraint)")


class StudentConfig(Section):
    enabled: bool = True
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="mlp", params={"hidden": [32]}))
    teacher: Literal["ensemble", "generalist", "specialists"] = "ensemble"
    mean: Literal["arithmetic", "geometric"] | None = Field(None, description="default: ensemble.mean")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft term; 1 - alpha on the hard labels")
    loss: str = Field("kd", description="a registered loss: kd, logit_matching, ce, ...")
    method: Literal["kd", "fitnets", "adversarial"] = Field(
        "kd", description="kd: the loss on soft targets; fitnets: a hint stage, then the loss; adversarial: a "
        "discriminator on logits")
    fitnets: FitNetsConfig | None = Field(None, description="needed by method: fitnets")
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    baseline: bool = Field(True, description="also train the same student on hard labels alone")
    jitter: int = Field(0, ge=0, description="augment the student's inputs; the teacher then runs online")
    train: TrainConfig = Field(default_factory=TrainConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    registered_model: str | None = Field("distilled-student", description="MLflow model registry name")

    @model_validator(mode="after")
    def _method_settings(self) -> "StudentConfig":
        if self.method == "fitnets" and self.fitnets is None:
            raise ValueError("method 'fitnets' needs student.fitnets.hint_layer and student.fitnets.guided_layer")
        return self

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:
        from .losses import LOSSES

        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
        return name


class SweepConfig(Section):
    grid: dict[str, list] = Field(default_factory=dict,
                                  description="student.* key -> values, e.g. student.temperature: [1, 2, 4]")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per trial; also its torch threads")
    max_concurrent: int | None = Field(None, gt=0, description="trials at once (default: as resources allow)")


class Config(StageConfig):
    """Root of the config: the ensemble stage's sections plus ``specialists``, ``student`` and ``sweep``."""

    specialists: SpecialistsConfig = Field(default_factory=SpecialistsConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """YAML (default: the digits demo) + ``--set a.b=c`` overrides, validated; a wrong key is an error."""
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return _load(Config, path, overrides)


def config_hash(config: Config, *sections: str) -> str:
    tree = config.model_dump(mode="json")
    return fingerprint({name: tree[name] for name in sections} if sections else tree)


__all__ = ["Config", "load_config", "dump_config", "config_hash", "DEFAULT_CONFIG"]
