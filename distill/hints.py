"""FitNets hints (Romero et al., 2015): a teacher hidden layer guides a student hidden layer through a regressor.

Stage 1 trains the student up to its guided layer, plus the regressor, on the hint loss alone; stage 2 trains the
whole student with the usual KD loss, starting from the stage-1 weights. Layers are chosen by their module names
(``dict(model.named_modules())``) and read with forward hooks, so no model's ``forward`` is edited.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Protocol, runtime_checkable

import torch
from pydantic import Field
from torch import nn

from ensemble.base.checkpoint import state_fingerprint
from ensemble.base.errors import ConfigError
from ensemble.models.registry import factory_identity
from ensemble.schema.sections import Section
from ensemble.training.objectives import Objective
from ensemble.training.trainer import TrainSpec

from .method import Method, MethodContext, MethodPlan, register_method


@runtime_checkable
class HintTeacher(Protocol):
    """What FitNets needs of a teacher beyond :class:`ensemble.training.teacher.Teacher`: the network whose hidden
    layers give the hints. :class:`ensemble.api.Ensemble` (its first member),
    :class:`specialists.api.SpecialistEnsemble` (its generalist) and :class:`ensemble.training.teacher.ModuleTeacher`
    (the module itself) have one."""

    def hint_module(self) -> nn.Module:
        """The network whose hidden layers give hints."""


def hint_network(teacher: object, name: str) -> nn.Module:
    """A copy of ``teacher``'s hint network, in eval mode; a teacher without one is a one-line error."""
    if not isinstance(teacher, HintTeacher):
        raise ConfigError(f"student.method: 'fitnets' needs a teacher with a hint_module() "
                          f"(distill.hints.HintTeacher); the {name} teacher ({type(teacher).__name__}) has none")
    return copy.deepcopy(teacher.hint_module()).eval()


def hint_loss(hint: torch.Tensor, regressed: torch.Tensor) -> torch.Tensor:
    """``L_HT = ½ ‖u_hint(x) − r(v_guided(x))‖²``, summed over features, batch mean."""
    return 0.5 * (hint - regressed).pow(2).flatten(1).sum(dim=1).mean()


class ForwardHooks:
    """Capture the outputs of named submodules during a forward pass: ``with ForwardHooks(m, ["3"]) as out:``."""

    def __init__(self, model: nn.Module, names: list[str], where: str = "model"):
        modules = dict(model.named_modules())
        missing = [name for name in names if name not in modules]
        if missing:
            known = [name for name in modules if name]
            raise ConfigError(f"{where}: no layer named {missing}; its layers are {known}")
        self.modules = {name: modules[name] for name in names}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles: list = []

    def __enter__(self) -> dict[str, torch.Tensor]:
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._keep(name)))
        return self.outputs

    def _keep(self, name: str):
        def hook(module, inputs, output):
            self.outputs[name] = output

        return hook

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def build_regressor(guided: torch.Tensor, hint: torch.Tensor, kernel_size: int = 3) -> nn.Module:
    """Linear for flat features (MLPs); a convolution for feature maps of the same spatial size (CNNs)."""
    if guided.dim() == 2 and hint.dim() == 2:
        return nn.Linear(guided.shape[1], hint.shape[1])
    if guided.dim() == 4 and hint.dim() == 4:
        if guided.shape[2:] != hint.shape[2:]:
            raise ConfigError(f"student.fitnets: guided maps {tuple(guided.shape[2:])} and hint maps "
                              f"{tuple(hint.shape[2:])} differ in size; choose layers of the same resolution")
        return nn.Conv2d(guided.shape[1], hint.shape[1], kernel_size, padding=kernel_size // 2)
    raise ConfigError(f"student.fitnets: cannot regress features of shape {tuple(guided.shape[1:])} onto "
                      f"{tuple(hint.shape[1:])}; pick two flat or two convolutional layers")


class HintStudent(nn.Module):
    """The student plus its regressor, so that stage 1's optimiser trains both (the regressor is dropped after)."""

    def __init__(self, student: nn.Module, regressor: nn.Module):
        super().__init__()
        self.student = student
        self.regressor = regressor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)


def hint_student_factory(student_factory, teacher: nn.Module, hint_layer: str, guided_layer: str,
                         input_shape: tuple, kernel_size: int = 3):
    """A picklable factory for stage 1: probes both layers' shapes once to size the regressor."""
    probe = torch.zeros((2, *input_shape))
    with torch.no_grad(), ForwardHooks(teacher, [hint_layer], "student.fitnets.hint_layer (teacher)") as t_out:
        teacher.eval()(probe)
    student = student_factory()
    with torch.no_grad(), ForwardHooks(student, [guided_layer], "student.fitnets.guided_layer (student)") as s_out:
        student.eval()(probe)
    guided_shape, hint_shape = tuple(s_out[guided_layer].shape), tuple(t_out[hint_layer].shape)
    return _HintFactory(student_factory, guided_shape, hint_shape, kernel_size)


class _HintFactory:
    def __init__(self, student_factory, guided_shape, hint_shape, kernel_size):
        self.student_factory, self.kernel_size = student_factory, kernel_size
        self.guided_shape, self.hint_shape = guided_shape, hint_shape

    def identity(self) -> dict:
        # The wrapped student's own identity (a registered model's params) would otherwise be lost in this wrapper.
        return {"hint_student": factory_identity(self.student_factory), "kernel_size": self.kernel_size,
                "guided_shape": list(self.guided_shape), "hint_shape": list(self.hint_shape)}

    def __call__(self) -> HintStudent:
        regressor = build_regressor(torch.empty(self.guided_shape), torch.empty(self.hint_shape), self.kernel_size)
        return HintStudent(self.student_factory(), regressor)


class HintObjective(Objective):
    """Stage 1: ``(logits, {"hint": L_HT})`` with the teacher's hint layer computed on the batch."""

    def __init__(self, teacher: nn.Module, hint_layer: str, guided_layer: str, teacher_id: str = ""):
        self.teacher, self.hint_layer, self.guided_layer = teacher, hint_layer, guided_layer
        self.teacher_id = teacher_id

    def __call__(self, model: HintStudent, x, y, idx):
        with torch.no_grad(), ForwardHooks(self.teacher, [self.hint_layer]) as t_out:
            self.teacher(x)
        with ForwardHooks(model.student, [self.guided_layer]) as s_out:
            logits = model(x)
        regressed = model.regressor(s_out[self.guided_layer])
        return logits, {"hint": hint_loss(t_out[self.hint_layer], regressed)}

    def to(self, device):
        self.teacher = self.teacher.to(device).eval()
        return self

    def describe(self) -> dict:
        return {"objective": "fitnets_hint", "hint_layer": self.hint_layer, "guided_layer": self.guided_layer,
                "teacher": self.teacher_id}

    def with_label_smoothing(self, label_smoothing: float) -> "HintObjective":
        return self  # a regression onto the teacher's hint layer: no hard labels to smooth


def load_guided_student(student_factory, hint_state: dict):
    """Stage 2's starting point: the student's weights from stage 1, the regressor left behind."""
    student = student_factory()
    prefix = "student."
    student.load_state_dict({k[len(prefix):]: v for k, v in hint_state.items() if k.startswith(prefix)})
    return student


class FitNetsConfig(Section):
    hint_layer: str = Field(..., description="teacher layer giving the hint, by module name, e.g. '3'")
    guided_layer: str = Field(..., description="student layer it guides, by module name, e.g. '2'")
    epochs: int = Field(5, gt=0, description="stage 1 (hint) epochs; stage 2 uses student.train")
    kernel_size: int = Field(3, gt=0, description="regressor kernel for convolutional features (odd)")


@register_method("fitnets")
class FitNets(Method):
    """Stage 1 on the hint alone (the student up to its guided layer, and the regressor); stage 2 is the usual
    distillation objective, from stage 1's weights."""

    Options = FitNetsConfig

    def __init__(self, options: FitNetsConfig | None = None):
        if options is None:
            raise ConfigError("student.fitnets: method 'fitnets' needs hint_layer and guided_layer")
        super().__init__(options)

    def plan(self, context: MethodContext, distillation) -> MethodPlan:
        cfg = self.options
        teacher = hint_network(context.teacher, context.teacher_id)
        input_shape = tuple(context.splits["train"].x.shape[1:])
        factory = hint_student_factory(context.student_factory, teacher, cfg.hint_layer, cfg.guided_layer,
                                       input_shape, cfg.kernel_size)
        # The last epoch's weights: the hint stage's outputs are not predictions, so validation accuracy cannot choose.
        train = context.train.model_copy(update={"epochs": cfg.epochs, "select": "last",
                                                 "early_stopping_patience": None, "final_fit": False})
        objective = HintObjective(teacher, cfg.hint_layer, cfg.guided_layer,
                                  f"{context.teacher_id}:{state_fingerprint(teacher.state_dict())}")
        spec = TrainSpec("student_hint", "student_hint", factory, train, context.seed, context.jitter,
                         objective=objective, sampler=context.sampler)
        state = context.fit([spec]).results[0].state_dict
        return MethodPlan(distillation, partial(load_guided_student, context.student_factory, state),
                          {"hint_stage": state_fingerprint(state)})
