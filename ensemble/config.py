"""The ensemble stage's part of the one config schema, and the YAML + ``--set`` loader.

Later stages extend :class:`StageConfig` with their own sections (``specialists``, ``student``);
every section forbids unknown keys so a typo is an error, never silently ignored.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .fields import LocalPath, NonEmpty, TrackingUri
from .strict_yaml import DuplicateKey, load_file, loads


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
        from .data import DATASETS

        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
        return name


class ModelConfig(Section):
    name: str = "mlp"
    params: dict[str, Any] = Field(default_factory=dict)
    version: int | NonEmpty | None = Field(None, description="bump to retrain when the model's code changed unseen")

    @model_validator(mode="after")
    def _known_model(self) -> "ModelConfig":
        from .models import check_model_params

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
        False, description="then retrain on train + validation for the chosen epoch count (ensemble.final_fit)")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="autocast the forward pass and loss; "
                                                        "fp16 (CUDA only) adds a gradient scaler")
    channels_last: bool = Field(False, description="convolutional models and inputs in channels-last memory format")
    compile: bool = Field(False, description="torch.compile the model (eager, with a warning, where unsupported)")
    grad_clip_norm: float | None = Field(None, gt=0, description="scale each step's gradient down to this L2 norm "
                                         "(over all parameters) when it is larger; the student's default is 5")

    def identity(self) -> dict:
        """The settings that name a model trained with them. An option added later is left out while it keeps its
        default, which is how every model before it was trained, so those models keep their names."""
        settings = self.model_dump(mode="json")
        for later in ("label_smoothing", "grad_clip_norm"):
            if not settings[later]:
                del settings[later]
        return settings


class ResourcesConfig(Section):
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor; also torch's thread count")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor; fractions pack several models on one GPU")
    workers_per_model: int = Field(1, ge=1, description="data-parallel Ray Train workers per model, each with "
                                   "num_cpus / num_gpus (see ensemble/data_parallel.py)")

    @field_validator("num_gpus")
    @classmethod
    def _whole_or_fraction(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError("must be a fraction below 1 or a whole number of GPUs")
        return value


class EnsembleConfig(Section):
    members: int = Field(3, ge=1)
    mean: Literal["arithmetic", "geometric"] = "arithmetic"
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="mlp", params={"hidden": [128, 128]}))
    train: TrainConfig = Field(default_factory=TrainConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    pack: int = Field(1, ge=1, description="members trained together in one actor as one vectorised model (one "
                      "batch order per pack; see ensemble/packing.py); resources are per pack")


class GeneralistConfig(Section):
    enabled: bool = True
    model: ModelConfig | None = Field(None, description="defaults to ensemble.model")
    train: TrainConfig | None = Field(None, description="defaults to ensemble.train")


class RayConfig(Section):
    address: NonEmpty | None = Field(None, description="cluster address; RAY_ADDRESS wins; none starts a local Ray")
    num_cpus: int | None = Field(None, gt=0, description="CPUs of a local Ray (default: all cores)")
    num_gpus: float | None = Field(None, ge=0, description="GPUs of a local Ray (default: detected)")


class TrackingConfig(Section):
    uri: TrackingUri = Field("sqlite:///mlflow.db", description="MLflow tracking URI; a relative sqlite path is "
                             "resolved, a leading ~ expanded")
    experiment: NonEmpty = "distill"
    system_metrics: bool = Field(False, description="MLflow's system metrics (CPU, memory, disk, network; GPU with "
                                 "nvidia-ml-py) on the parent run while it lasts")


class StageConfig(Section):
    seed: int = 0
    output_dir: LocalPath = "runs/digits"
    data: DataConfig = Field(default_factory=DataConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    generalist: GeneralistConfig = Field(default_factory=GeneralistConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def generalist_model(self) -> ModelConfig:
        return self.generalist.model or self.ensemble.model

    def generalist_train(self) -> TrainConfig:
        return self.generalist.train or self.ensemble.train


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able value (configs, split descriptions)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


ConfigT = TypeVar("ConfigT", bound=BaseModel)


class Flag(str):
    """A command-line flag's value as an override (``--output-dir X`` is ``output_dir="X"``): the value is taken
    literally, never parsed as YAML (``''`` stays empty, ``#`` is no comment), and errors name the flag."""

    def __new__(cls, flag: str, key: str, value: str):
        item = super().__new__(cls, f"{key}={json.dumps(value)}")  # a JSON string is a YAML double-quoted scalar
        item.flag = flag
        return item


def _named(item: str) -> str:
    return item.flag if isinstance(item, Flag) else f"--set {item}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=c`` -> (["a", "b"], value parsed as YAML, so numbers, booleans and lists work)."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected dotted.key=value")
    try:
        value = loads(raw) if raw.strip() else None
    except DuplicateKey as err:
        raise ConfigError(f"{_named(item)}: {err}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{_named(item)}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return tree


def _error_source(loc: tuple, overrides: list[str], source: str) -> str:
    """The ``--set`` argument that supplied the value at ``loc`` (the last one wins, as when applied), else the file."""
    dotted = [str(part) for part in loc]
    for item in reversed(overrides):
        path, _ = parse_override(item)
        if dotted[: len(path)] == path or path[: len(dotted)] == dotted:
            return _named(item)
    return source


def describe_validation_error(err: ValidationError, source: str = "config", overrides: list[str] = ()) -> str:
    """One clause per error, each naming where its value came from: ``--set a.b=x: a.b: must be > 0 (got -1)``."""
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "config"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg += f" (got {e['input']!r})"
        parts.append(f"{_error_source(e['loc'], list(overrides), source)}: {key}: {msg}")
    return "; ".join(parts)


def validate_config(schema: type[ConfigT], tree: dict, source: str = "config", overrides: list[str] = ()) -> ConfigT:
    try:
        return schema.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, source, overrides)) from None


def api_arguments(schema: type[ConfigT], config: ConfigT | dict | None, kwargs: dict,
                  aliases: dict[str, str] | None = None, where: str = "config",
                  accepted: Collection[str] = (), positional: Collection[str] = ()) -> tuple[ConfigT, dict]:
    """The Python API's one mapping to the config: ``config`` (a section, a dict or None) with the keyword arguments
    that name its fields (or an alias such as ``n_members`` -> ``members``) applied and validated; the keywords left
    over, each one of ``accepted`` (:class:`ensemble.fit.FitOptions`' fields), are returned for it. Any other keyword
    is a one-line error naming ``where`` and the nearest valid keyword (never one of the caller's ``positional``
    parameters, which a field of the same name cannot be passed as)."""
    if not isinstance(config, (BaseModel, dict, type(None))):
        raise ConfigError(f"{where}: config must be a {schema.__name__}, a dict or None, got {type(config).__name__}")
    tree = config.model_dump() if isinstance(config, BaseModel) else dict(config or {})
    aliases = aliases or {}
    rest = {}
    for key, value in kwargs.items():
        path = aliases.get(key, key).split(".")
        if path[0] not in schema.model_fields:
            if key not in accepted:
                valid = [name for name in [*schema.model_fields, *aliases, *accepted] if name not in positional]
                raise ConfigError(unknown_keyword(where, key, valid))
            rest[key] = value
            continue
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            node[part] = child = child.model_dump() if isinstance(child, BaseModel) else dict(child or {})
            node = child
        node[path[-1]] = value
    return validate_config(schema, tree, where), rest


def unknown_keyword(where: str, key: str, valid: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}?" if close else f"expected one of {', '.join(sorted(set(valid)))}"
    return f"{where}: unknown keyword argument {key!r}; {hint}"


def load_config(schema: type[ConfigT], path: str | Path | None = None, overrides: list[str] = (),
                prepare=None) -> ConfigT:
    """Read YAML (or start from the schema defaults), apply ``--set`` overrides, call ``prepare(tree, path)`` (say, to
    import plugins that register names the schema checks), validate."""
    tree: dict = {}
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        tree = load_file(path) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    apply_overrides(tree, list(overrides))
    if prepare is not None:
        prepare(tree, path)
    return validate_config(schema, tree, source, list(overrides))


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
