"""train.label_smoothing: the smoothed cross-entropy against hand values, where it applies, and where it refuses."""

import math

import pytest
import torch
from helpers import small_mlp_factory

from distill.losses import LOSSES, get_loss, register_loss
from distill.objective import DistillationObjective
from ensemble.schema.sections import TrainConfig
from ensemble.base.errors import ConfigError
from ensemble.training.objectives import CrossEntropy
from ensemble.training.spec import TrainSpec
from ensemble.training.teacher import TeacherOutputs

# Three examples over four classes (a batch, so a sum where a mean belongs fails).
Z = [[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 0.4], [-0.5, 1.5, 0.0, 1.0]]
Y = [0, 3, 1]


def _hand_smoothed_ce(eps: float) -> float:
    """Mean over rows of −Σ_c t_c log softmax(z)_c with t = (1 − ε)·onehot(y) + ε/C, in plain math."""
    total = 0.0
    for z, y in zip(Z, Y):
        log_norm = math.log(sum(math.exp(v) for v in z))
        log_q = [v - log_norm for v in z]
        targets = [(1 - eps) * (c == y) + eps / len(z) for c in range(len(z))]
        total -= sum(t * lq for t, lq in zip(targets, log_q))
    return total / len(Z)


class _Fixed(torch.nn.Module):
    def forward(self, x):
        return x


def test_smoothed_cross_entropy_matches_hand_values_for_a_batch():
    logits, labels = torch.tensor(Z, dtype=torch.float64), torch.tensor(Y)
    for eps in (0.0, 0.1, 0.3):
        _, terms = CrossEntropy(eps)(_Fixed(), logits, labels, torch.arange(3))
        assert math.isclose(terms["ce"].item(), _hand_smoothed_ce(eps), rel_tol=1e-12), eps
    assert _hand_smoothed_ce(0.1) != pytest.approx(_hand_smoothed_ce(0.0)), "the values under test differ"


def test_the_students_hard_terms_are_smoothed_and_the_soft_term_is_not():
    logits, labels = torch.tensor(Z, dtype=torch.float64), torch.tensor(Y)
    baseline = DistillationObjective("ce").with_label_smoothing(0.1)
    assert math.isclose(baseline(_Fixed(), logits, labels, torch.arange(3))[1]["hard"].item(),
                        _hand_smoothed_ce(0.1), rel_tol=1e-12)
    teacher = TeacherOutputs(torch.softmax(torch.tensor(Z, dtype=torch.float64).flip(1), 1),
                             torch.tensor(Z, dtype=torch.float64).flip(1))
    plain = DistillationObjective("kd", 2.0, 0.75, cache=teacher)
    smoothed = plain.with_label_smoothing(0.1)
    _, a = plain(_Fixed(), logits, labels, torch.arange(3))
    _, b = smoothed(_Fixed(), logits, labels, torch.arange(3))
    assert a["soft"].item() == b["soft"].item()
    assert math.isclose(b["hard"].item(), 0.25 * _hand_smoothed_ce(0.1), rel_tol=1e-12)
    assert plain.label_smoothing == 0.0, "smoothing returns a copy; the original is unchanged"


def test_a_spec_applies_its_train_sections_smoothing_and_is_named_by_it():
    factory = small_mlp_factory((4,), 3)
    plain = TrainSpec("m", "member", factory, TrainConfig())
    smoothed = TrainSpec("m", "member", factory, TrainConfig(label_smoothing=0.1))
    assert smoothed.objective.label_smoothing == 0.1 and plain.objective.label_smoothing == 0.0
    assert plain.fingerprint("data") != smoothed.fingerprint("data")
    student = TrainSpec("s", "student", factory, TrainConfig(label_smoothing=0.2),
                        objective=DistillationObjective("ce"))
    assert student.objective.describe()["label_smoothing"] == 0.2


def test_a_subclass_of_cross_entropy_keeps_its_behaviour_when_smoothed():
    class Counting(CrossEntropy):
        calls = 0

        def __call__(self, model, x, y, idx):
            Counting.calls += 1
            return super().__call__(model, x, y, idx)

    for eps in (0.0, 0.1):
        spec = TrainSpec("m", "member", small_mlp_factory((4,), 3), TrainConfig(label_smoothing=eps),
                         objective=Counting())
        assert isinstance(spec.objective, Counting) and spec.objective.label_smoothing == eps


def test_objectives_that_cannot_smooth_refuse_in_one_line():
    @register_loss("no_smoothing_here")
    def loss(student_logits, labels, teacher, temperature, alpha):
        return {"hard": get_loss("ce")(student_logits, labels, teacher, temperature, alpha)["hard"]}

    try:
        with pytest.raises(ConfigError, match="train.label_smoothing: student.loss 'no_smoothing_here' takes no"):
            TrainSpec("s", "student", small_mlp_factory((4,), 3), TrainConfig(label_smoothing=0.1),
                      objective=DistillationObjective("no_smoothing_here"))
        TrainSpec("s", "student", small_mlp_factory((4,), 3), TrainConfig(),
                  objective=DistillationObjective("no_smoothing_here"))  # without smoothing it trains as before
    finally:
        LOSSES.pop("no_smoothing_here")


def test_an_objective_outside_the_class_tree_trains_unsmoothed_and_refuses_smoothing():
    class Duck:  # the objective protocol without Objective's base class
        def __call__(self, model, x, y, idx):
            logits = model(x)
            return logits, {"ce": torch.nn.functional.cross_entropy(logits, y)}

        def describe(self):
            return {"objective": "duck"}

    duck = Duck()
    assert TrainSpec("m", "member", small_mlp_factory((4,), 3), TrainConfig(), objective=duck).objective is duck
    with pytest.raises(ConfigError, match="train.label_smoothing: the Duck objective does not apply it"):
        TrainSpec("m", "member", small_mlp_factory((4,), 3), TrainConfig(label_smoothing=0.1), objective=Duck())
