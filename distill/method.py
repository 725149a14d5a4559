"""Distillation methods by name: each one file that builds its objective and any stage before the main one.

A method is a :class:`Method` subclass registered with :func:`register_method`. Its ``Options`` (a pydantic
section) are read from the student section under the method's name (``student.fitnets: {...}``) or given to
:class:`distill.api.Distiller` as a keyword of that name. :meth:`Method.plan` receives a :class:`MethodContext`
(the teacher, the student's factory, the data, and a way to train extra stages on Ray) and the plain
distillation objective, and returns what the student trains on. ``kd`` is the base: the objective as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from ensemble.base.errors import ConfigError
from ensemble.data.split import Split
from ensemble.engine.fit import FitOptions, Fitted, fit_specs
from ensemble.schema.loading import validate_config
from ensemble.schema.sections import Section, TrainConfig
from ensemble.training.objectives import Objective
from ensemble.training.teacher import Teacher
from ensemble.training.trainer import TrainResult, TrainSpec

from .objective import DistillationObjective


class NoOptions(Section):
    """A method without settings."""


@dataclass
class MethodContext:
    """Everything a method may use; :meth:`fit` trains extra stages like every other model (Ray, MLflow, disk)."""

    teacher: Teacher
    teacher_id: str
    student_factory: Callable[[], nn.Module]
    train: TrainConfig
    seed: int
    jitter: int
    splits: dict[str, Split]
    sampler: object
    data_fingerprint: str
    num_classes: int
    options: FitOptions
    run_ids: dict[str, str] = field(default_factory=dict)
    stage_results: dict[str, TrainResult] = field(default_factory=dict)  # every model trained, by name

    def fit(self, specs: list[TrainSpec]) -> Fitted:
        fitted = fit_specs(specs, self.splits, self.data_fingerprint, self.num_classes, self.options)
        self.run_ids.update(fitted.run_ids)
        self.stage_results.update({result.name: result for result in fitted.results})
        return fitted


@dataclass
class MethodPlan:
    """What the main stage trains: the objective, the student's starting point, and what else names it."""

    objective: Objective
    student_factory: Callable[[], nn.Module]
    identity: dict = field(default_factory=dict)


class Method:
    """``kd``: the student learns from the configured loss on the teacher's soft targets (paper §2)."""

    name = "kd"
    Options: type[Section] = NoOptions

    def __init__(self, options: Section | None = None):
        self.options = options if options is not None else self.Options()

    def plan(self, context: MethodContext, distillation: DistillationObjective) -> MethodPlan:
        return MethodPlan(distillation, context.student_factory)


METHODS: dict[str, type[Method]] = {}


def register_method(name: str):
    """Class decorator: ``@register_method("mine") class Mine(Method): ...`` makes ``student.method: mine`` work."""

    def decorator(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorator


register_method("kd")(Method)


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ConfigError(f"student.method: unknown method {name!r}; expected one of {sorted(METHODS)} "
                          "(or register one with distill.register_method)")
    return METHODS[name]


def build_method(name: str, options: Section | dict | None = None) -> Method:
    """The named method with its options validated (one line naming the bad key when they are wrong)."""
    cls = get_method(name)
    if options is not None and not isinstance(options, cls.Options):
        options = validate_config(cls.Options, dict(options), f"student.{name}")
    return cls(options)
