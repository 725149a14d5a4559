"""A distillation method from outside the package: the usual objective with its soft term scaled.

Used by tests/test_plugins.py through ``imports: [.../scaled_kd.py]`` and ``student.method: scaled_kd``.
"""

from pydantic import Field

from distill import Method, MethodPlan, register_method
from ensemble.schema.sections import Section
from ensemble.training.objectives import Objective


class ScaledKDOptions(Section):
    scale: float = Field(0.5, gt=0)


class ScaledObjective(Objective):
    def __init__(self, inner, scale: float):
        self.inner, self.scale = inner, scale

    def __call__(self, model, x, y, idx):
        logits, terms = self.inner(model, x, y, idx)
        terms["scaled_soft"] = self.scale * terms.pop("soft")
        return logits, terms

    def to(self, device):
        self.inner = self.inner.to(device)
        return self

    def describe(self) -> dict:
        return {**self.inner.describe(), "objective": "scaled_kd", "scale": self.scale}


@register_method("scaled_kd")
class ScaledKD(Method):
    Options = ScaledKDOptions

    def plan(self, context, distillation) -> MethodPlan:
        return MethodPlan(ScaledObjective(distillation, self.options.scale), context.student_factory)
