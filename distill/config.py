"""The one config schema of the whole pipeline, composed from each stage's sections."""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from pathlib import Path
from typing import Literal

import cloudpickle
from pydantic import Field, field_validator, model_validator

from ensemble.base.errors import ConfigError
from ensemble.base.fields import NonEmpty, Plugin, plugin
from ensemble.base.identity import fingerprint
from ensemble.config import StageConfig
from ensemble.schema.loading import dump_config
from ensemble.schema.loading import load_config as _load
from ensemble.schema.sections import ModelConfig, ResourcesConfig, Section, TrainConfig
from specialists.config import SpecialistsConfig

from .formats import FORMATS
from .losses import LOSSES
from .method import METHODS, build_method
from .plugins import recording
from .teachers import TEACHERS

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "digits.yaml"


class TransferConfig(Section):
    fraction: float = Field(1.0, gt=0, le=1, description="seeded share of the training split (the paper's 3%)")
    omit_classes: list[int] = Field(default_factory=list, description="classes left out (the paper's 'no 3s')")
    only_classes: list[int] | None = Field(None, description="keep only these classes (the paper's 7s and 8s)")


class CacheConfig(Section):
    store: Literal["memory", "disk"] = Field("memory", description="the teacher's targets in RAM, or as memory-mapped "
                                             "shards under output_dir read a batch at a time (data beyond RAM)")
    top_k: int | None = Field(None, gt=0, description="keep each example's top K teacher probabilities and the rest's "
                              "mass (many classes; see distill/topk.py for what the loss then computes)")
    rest_samples: int = Field(0, ge=0, description="with top_k: also keep this many classes drawn from each "
                              "example's rest, so the loss estimates the dense one without bias (distill/topk.py)")
    rows_per_shard: int = Field(65536, gt=0, description="examples per shard file (store: disk)")

    @model_validator(mode="after")
    def _tail_needs_top_k(self) -> "CacheConfig":
        if self.rest_samples and not self.top_k:
            raise ValueError("rest_samples: the draws come from the classes outside the top K; set top_k too")
        return self


STUDENT_GRAD_CLIP_NORM = 5.0


class StudentTrainConfig(TrainConfig):
    """``student.train``: the shared training settings, with gradient clipping on unless set to null. The T²-scaled
    soft term's gradient on the logits is ``α·T·(q_T − p_T)``, up to about T times the hard-label one, so at the
    shared lr 0.05 a wide CNN head's first steps can blow up and kill every ReLU behind a BatchNorm (the student
    then sits at chance for good; benchmarks/cnn_student.py)."""

    grad_clip_norm: float | None = Field(STUDENT_GRAD_CLIP_NORM, gt=0, description="scale each step's gradient "
                                         "down to this L2 norm when larger; null: no clipping (the paper's)")

    @model_validator(mode="before")
    @classmethod
    def _from_train_config(cls, value):
        """A plain :class:`TrainConfig` keeps the fields it sets; the others take the student's defaults."""
        if isinstance(value, TrainConfig) and not isinstance(value, cls):
            return value.model_dump(exclude_unset=True)
        return value


class StudentConfig(Section):
    enabled: bool = True
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="mlp", params={"hidden": [32]}))
    teacher: str = Field("ensemble", description="a registered teacher: ensemble, generalist, specialists, ...")
    mean: Literal["arithmetic", "geometric"] | None = Field(None, description="default: ensemble.mean")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft term; 1 - alpha on the hard labels")
    loss: str = Field("kd", description="a registered loss: kd, logit_matching, ce, ...")
    method: str = Field("kd", description="a registered method: kd (the loss on soft targets), fitnets (a hint "
                        "stage, then the loss), adversarial (a discriminator on logits), ...")
    method_options: dict[str, dict | None] = Field(
        default_factory=dict, description="each method's settings, written in YAML under its name: student.fitnets")
    baseline: bool = Field(True, description="also train the same student on hard labels alone")
    jitter: int = Field(0, ge=0, description="augment the student's inputs; the teacher then runs online")
    cache: CacheConfig = Field(default_factory=CacheConfig)
    train: StudentTrainConfig = Field(default_factory=StudentTrainConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    registered_model: NonEmpty | None = Field("distilled-student", description="MLflow model registry name")
    registered_alias: NonEmpty | None = Field("champion", description="alias moved to each new version, so "
                                         "models:/NAME@ALIAS resolves to it (MLflow reserves 'latest' and 'vN')")
    export: list[str] = Field(["pt2", "onnx"], min_length=1, description="files the student ships as, the first "
                              "being the main one: pt2 (torch.export), onnx (run by onnxruntime), torchscript")

    @model_validator(mode="before")
    @classmethod
    def _gather_method_options(cls, tree):
        """``student.<method name>: {...}`` in YAML (or ``--set``) holds that method's settings."""

        # Anything but a mapping is left to the field's own validation, which names student.method_options.
        if isinstance(tree, dict) and isinstance(tree.get("method_options") or {}, dict):
            tree = dict(tree)
            options = dict(tree.get("method_options") or {})
            for name in [key for key in tree if key in METHODS and key not in cls.model_fields]:
                options[name] = tree.pop(name)
            tree["method_options"] = options
        return tree

    @model_validator(mode="after")
    def _known_method_and_teacher(self) -> "StudentConfig":

        if self.teacher not in TEACHERS:
            raise ValueError(f"student.teacher: unknown teacher {self.teacher!r}; expected one of {sorted(TEACHERS)} "
                             "(or register one with distill.register_teacher)")
        given = {name for name, options in self.method_options.items() if options is not None}
        for name in {self.method} | given:
            try:
                build_method(name, self.method_options.get(name))
            except ConfigError as err:
                raise ValueError(str(err)) from None
        return self

    @field_validator("export")
    @classmethod
    def _known_formats(cls, names: list[str]) -> list[str]:

        unknown = [name for name in names if name not in FORMATS]
        if unknown:
            raise ValueError(f"unknown export format {unknown[0]!r}; expected some of {sorted(FORMATS)}")
        return list(dict.fromkeys(names))

    @field_validator("registered_alias")
    @classmethod
    def _usable_alias(cls, alias: str | None) -> str | None:

        if alias is not None and (alias.lower() == "latest" or re.fullmatch(r"v\d+", alias, re.IGNORECASE)):
            raise ValueError(f"{alias!r} is reserved by MLflow (models:/NAME/latest already means the newest "
                             "version); choose another alias, such as champion")
        return alias

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, name: str) -> str:

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

    name: NonEmpty | None = Field(None, description="names the MLflow parent runs ('NAME: run'); by default the config "
                             "file's name")
    imports: list[Plugin] = Field(default_factory=list, description="modules or .py files imported before the config "
                               "is checked: they register models, losses, methods, teachers, datasets")

    specialists: SpecialistsConfig = Field(default_factory=SpecialistsConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """YAML (default: the digits demo) + ``--set a.b=c`` overrides, validated; a wrong key is an error."""
    if path is None and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    return _load(Config, path, overrides, prepare=_prepare)


def _prepare(tree: dict, path: Path | None) -> None:
    """Name the config after its file unless it names itself; import its plugins before validation."""
    if path is not None and tree.get("name") is None:
        tree["name"] = Path(path).stem
    imports = tree.get("imports") or []
    if not isinstance(imports, list) or not all(isinstance(name, str) for name in imports):
        raise ConfigError(f"imports: expected a list of modules or .py files, got {imports!r}")
    for i, name in enumerate(imports):
        try:
            imports[i] = plugin(name)  # the schema's own rule, applied before the import it guards
        except ValueError as err:
            raise ConfigError(f"imports: {err} (got {name!r})") from None
        import_plugin(imports[i], path.parent if path is not None else None)


def import_plugin(name: str, config_dir: Path | None = None):
    """Import a module by dotted name, or a ``.py`` file (relative to the config's folder, else the working
    folder). Its classes are pickled by value, so Ray actors on any node get them without installing the file;
    what it registers is recorded for workers that look names up themselves (:mod:`distill.plugins`)."""
    from ray import cloudpickle as ray_cloudpickle


    try:
        with recording():
            module = _import(name, config_dir)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the plugin raises, the user gets one line naming it
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"imports: {name}: {type(err).__name__}: {first}") from None
    for pickler in (cloudpickle, ray_cloudpickle):  # Ray ships its own copy of cloudpickle
        pickler.register_pickle_by_value(module)
    return module


def _import(name: str, config_dir: Path | None):

    if not name.endswith(".py"):
        return importlib.import_module(name)
    candidates = [Path(config_dir) / name] if config_dir is not None else []
    file = next((c for c in [*candidates, Path(name)] if c.is_file()), None)
    if file is None:
        raise ConfigError(f"imports: file not found: {name}")
    module_name = f"distill_plugin_{file.stem}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def config_hash(config: Config, *sections: str) -> str:
    tree = config.model_dump(mode="json")
    return fingerprint({name: tree[name] for name in sections} if sections else tree)


__all__ = ["Config", "load_config", "dump_config", "config_hash", "DEFAULT_CONFIG", "import_plugin"]
