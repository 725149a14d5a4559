"""The config sections every stage shares (data, model, train, resources, ray, tracking); each forbids unknown
keys, so a typo is an error, never silently ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ensemble.base.fields import LocalPath, NonEmpty, TrackingUri
from ensemble.data.registry import DATASETS
from ensemble.models.registry import check_model_params


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(Section):
    random_crop: int = Field(0, ge=0, description="zero-pad by k pixels and crop back at random (CIFAR: 4); the same "
                             "translation as data.jitter, so set one of them")
    hflip: bool = Field(False, description="mirror a random half of each batch left-right")


class DataConfig(Section):
    name: str = "digits"
    root: LocalPath = "../shared/data"
    download: bool = False
    val_size: float = Field(0.1, gt=0, lt=1, description="fraction of the training set held out for validation")
    train_limit: int | None = Field(None, gt=0, description="keep only the first N training examples (quick runs)")
    jitter: int = Field(0, ge=0, description="random translation of inputs by up to this many pixels (train only)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    in_memory: Literal["auto"] | bool = Field("auto", description="imagefolder: read every image into memory once "
                                              "(true), stream them from disk each epoch (false), or auto")
    memory_budget_mb: float = Field(2048, gt=0, description="auto: read into memory when the images fit this budget")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per actor when streaming")
    decoded_cache: LocalPath | None = Field(None, description="streaming: a folder where each dataset is decoded once "
                                      "into a memory-mapped array, named by a hash of its files, and read from there")
    normalize: bool = Field(False, description="per-channel mean/std of the training split, applied by the model's "
                            "first layer (so evaluation and export apply it too)")

    @model_validator(mode="after")
    def _one_translation(self) -> "DataConfig":
        if self.jitter and self.augment.random_crop:
            raise ValueError("data.jitter and data.augment.random_crop are the same random translation; set one")
        return self

    @property
    def shift(self) -> int:
        """Pixels of random translation (jitter, or the crop's padding)."""
        return self.jitter or self.augment.random_crop

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:

        if name not in DATASETS:
            raise ValueError(DATASETS.unknown(name))
        return name


class ModelConfig(Section):
    name: str = "mlp"
    params: dict[str, Any] = Field(default_factory=dict)
    version: int | NonEmpty | None = Field(None, description="bump to retrain when the model's code changed unseen")

    @model_validator(mode="after")
    def _known_model(self) -> "ModelConfig":

        check_model_params(self.name, self.params)
        return self


class OptimizerConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class SchedulerConfig(Section):
    name: Literal["none", "cosine", "step", "multistep", "onecycle"] = "cosine"
    step_size: int = Field(10, gt=0, description="epochs between decays (step)")
    milestones: list[int] = Field(default_factory=list, description="epochs after which lr decays (multistep)")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor (step, multistep)")
    pct_start: float = Field(0.3, gt=0, lt=1, description="share of the steps spent warming up (onecycle)")
    div_factor: float = Field(25.0, ge=1, description="initial lr = optimizer.lr / div_factor (onecycle)")
    final_div_factor: float = Field(1e4, ge=1, description="final lr = initial lr / final_div_factor (onecycle)")


class TrainConfig(Section):
    epochs: int = Field(20, gt=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(2048, gt=0)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    early_stopping_patience: int | None = Field(
        None, gt=0, description="stop after this many epochs without a better validation accuracy"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="hard-label targets (1 - eps) on the label plus eps "
                                   "/ C on every class (Szegedy et al., 2016); the paper's baselines used none")
    select: Literal["best", "last"] = Field(
        "best", description="keep the weights of the epoch with the best validation accuracy, or of the last epoch")
    final_fit: bool = Field(
        False, description="then retrain on train + validation for the chosen epoch count "
        "(ensemble.training.final_fit)")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast the forward pass and loss; "
                                                        "fp16 (CUDA only) adds a gradient scaler")
    channels_last: bool = Field(False, description="convolutional models and inputs in channels-last memory format")
    compile: bool = Field(False, description="torch.compile the model (eager, with a warning, where unsupported)")
    grad_clip_norm: float | None = Field(None, gt=0, description="scale each step's gradient down to this L2 norm "
                                         "(over all parameters) when it is larger; the student's default is 5")
    grad_clip_value: float | None = Field(None, gt=0, description="clamp each gradient element to [-value, value] "
                                          "before the step (and before grad_clip_norm)")

    def identity(self) -> dict:
        """The settings that name a model trained with them. An option added later is left out while it keeps its
        default, which is how every model before it was trained, so those models keep their names."""
        settings = self.model_dump(mode="json")
        for later in ("label_smoothing", "grad_clip_norm", "grad_clip_value"):
            if not settings[later]:
                del settings[later]
        return settings


class ResourcesConfig(Section):
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor; also torch's thread count")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractions pack several models on one GPU")
    workers_per_model: int = Field(1, ge=1, description="data-parallel Ray Train workers per model, each with "
                                   "num_cpus / num_gpus (see ensemble/cluster/data_parallel.py)")

    @field_validator("num_gpus")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError("must be a fraction below 1 or a whole number of GPUs")
        return value


class RayConfig(Section):
    address: NonEmpty | None = Field(None, description="cluster address; RAY_ADDRESS wins; none starts a local Ray")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of a local Ray (default: all cores)")
    num_gpus: float | None = Field(None, ge=0, description="GPUs of a local Ray (default: detected)")
    max_restarts: int = Field(3, ge=0, description="how often a model's actor lost with its node (or killed) is "
                              "started again on another live node, resuming from its newest checkpoint")


class TrackingConfig(Section):
    uri: TrackingUri = Field("sqlite:///mlflow.db", description="MLflow tracking URI; a relative sqlite path is "
                             "resolved, a leading ~ expanded")
    experiment: NonEmpty = "distill"
    system_metrics: bool = Field(False, description="MLflow's system metrics (CPU, memory, disk, network; GPU with "
                                 "nvidia-ml-py) on the parent run while it lasts")
