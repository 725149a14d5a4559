"""Teachers by name for the config (``student.teacher``): each builds a :class:`ensemble.training.teacher.Teacher`
from the stages the pipeline trained. Register your own with :func:`register_teacher`; the protocol is all a
teacher needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ensemble.api import Ensemble
from ensemble.base.errors import ConfigError
from ensemble.training.teacher import ModuleTeacher, Teacher
from specialists.api import SpecialistEnsemble


@dataclass
class TrainedStages:
    """What the pipeline trained before the student: the ensemble (with its generalist) and any specialists."""

    ensemble: Ensemble
    specialists: SpecialistEnsemble | None = None


@dataclass
class TeacherSource:
    build: Callable[[TrainedStages, object], Teacher]  # (stages, the whole Config) -> a Teacher
    needs: tuple[str, ...] = ()  # config switches that must be true, checked before anything trains (distill.needs)

    @property
    def needs_specialists(self) -> bool:
        return "specialists.enabled" in self.needs


TEACHERS: dict[str, TeacherSource] = {}


def register_teacher(name: str, needs_specialists: bool = False, needs: tuple[str, ...] = ()):
    """Decorator: ``@register_teacher("mine") def mine(stages, config) -> Teacher`` makes ``student.teacher: mine``
    work. ``needs`` names the config switches the teacher needs true (``"generalist.enabled"``); the pipeline checks
    them before anything trains. ``needs_specialists`` (``"specialists.enabled"``) also trains the specialist stage
    first."""

    def decorator(build: Callable[[TrainedStages, object], Teacher]):
        TEACHERS[name] = TeacherSource(build, tuple(needs) + (("specialists.enabled",) if needs_specialists else ()))
        return build

    return decorator


def build_teacher(name: str, stages: TrainedStages, config) -> Teacher:
    if name not in TEACHERS:
        raise ConfigError(f"student.teacher: unknown teacher {name!r}; expected one of {sorted(TEACHERS)}")
    return TEACHERS[name].build(stages, config)


@register_teacher("ensemble")
def ensemble_teacher(stages: TrainedStages, config) -> Teacher:
    return stages.ensemble.with_mean(config.student.mean or config.ensemble.mean)


@register_teacher("generalist", needs=("generalist.enabled",))
def generalist_teacher(stages: TrainedStages, config) -> Teacher:
    if stages.ensemble.generalist_ is None:
        raise ConfigError("student.teacher: 'generalist' needs generalist.enabled: true")
    return ModuleTeacher(stages.ensemble.generalist_, "generalist")


@register_teacher("specialists", needs_specialists=True)
def specialists_teacher(stages: TrainedStages, config) -> Teacher:
    if stages.specialists is None:
        raise ConfigError("student.teacher: 'specialists' needs specialists.enabled: true")
    return stages.specialists
