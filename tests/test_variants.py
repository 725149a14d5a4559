"""FitNets hints and adversarial KD: each equation against hand-computed values, then both through the Distiller."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from torch import nn

from distill.adversarial import (
    AdversarialObjective, critic_loss, gan_discriminator_loss, gan_student_loss, gradient_penalty, wgan_student_loss,
)
from distill.api import Distiller
from distill.hints import ForwardHooks, build_regressor, hint_loss, load_guided_student
from distill.losses import TeacherOutputs
from ensemble.api import Ensemble
from ensemble.base.errors import ConfigError
from ensemble.models.registry import build_model

from helpers import quick_train, small_mlp_factory


def test_hint_loss_is_half_the_squared_distance_summed_over_features_batch_mean():
    hint = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    regressed = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    # example 1: ½(1 + 4) = 2.5; example 2: ½·9 = 4.5; mean 3.5
    assert hint_loss(hint, regressed).item() == pytest.approx(3.5)


def test_forward_hooks_capture_named_layers_and_leave_no_hook_behind():
    model = build_model("mlp", (1, 8, 8), 10, {"hidden": [16, 12]})
    x = torch.randn(3, 1, 8, 8)
    with ForwardHooks(model, ["2", "4"]) as out:
        model(x)
    assert out["2"].shape == (3, 16) and out["4"].shape == (3, 12)
    assert (out["2"] >= 0).all(), "layer '2' is the first ReLU"
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ConfigError, match="no layer named"):
        ForwardHooks(model, ["nope"])


def test_regressor_is_linear_for_vectors_and_a_convolution_for_maps():
    assert isinstance(build_regressor(torch.zeros(2, 5), torch.zeros(2, 7)), nn.Linear)
    conv = build_regressor(torch.zeros(2, 4, 6, 6), torch.zeros(2, 8, 6, 6), kernel_size=3)
    assert isinstance(conv, nn.Conv2d) and conv(torch.zeros(2, 4, 6, 6)).shape == (2, 8, 6, 6)
    with pytest.raises(ConfigError, match="differ in size"):
        build_regressor(torch.zeros(2, 4, 6, 6), torch.zeros(2, 8, 3, 3))


def test_stage_two_starts_from_the_stage_one_student_without_the_regressor():
    factory = partial(build_model, "mlp", (1, 8, 8), 10, {"hidden": [16]})
    trained = {f"student.{k}": v + 1 for k, v in factory().state_dict().items()}
    trained["regressor.weight"] = torch.zeros(3, 16)
    student = load_guided_student(factory, trained)
    assert torch.equal(student.state_dict()["1.weight"], trained["student.1.weight"])


def test_gan_losses_by_hand():
    zero = torch.zeros(4)
    assert gan_discriminator_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert gan_discriminator_loss(zero, zero, gamma=2).item() == pytest.approx(4 * math.log(2))
    # a confident, correct discriminator: σ(10) ≈ 1 on the teacher, σ(-10) ≈ 0 on the student -> loss ≈ 0
    assert gan_discriminator_loss(torch.full((4,), 10.0), torch.full((4,), -10.0)).item() < 1e-4
    logits, labels = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    terms = gan_student_loss(logits, labels, zero, alpha=0.5, beta=2.0)
    assert terms["adversarial"].item() == pytest.approx(0.5 * math.log(2))
    assert terms["hard"].item() == pytest.approx(2.0 * math.log(3))


def test_wasserstein_losses_by_hand():
    assert critic_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 2.0])).item() == pytest.approx(-1.0)
    terms = wgan_student_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.tensor([1.0, 2.0]), 0.5, 1.0)
    assert terms["adversarial"].item() == pytest.approx(-0.75)


@pytest.mark.parametrize("norm, expected", [(2.0, 1.0), (1.0, 0.0), (0.5, 0.25)])
def test_gradient_penalty_of_a_linear_critic_is_its_slope_minus_one_squared(norm, expected):
    critic = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        critic.weight.copy_(torch.tensor([[norm, 0.0, 0.0, 0.0]]))
    real, fake = torch.randn(5, 4), torch.randn(5, 4)
    penalty = gradient_penalty(lambda v: critic(v).squeeze(1), real, fake, torch.rand(5, 1))
    assert penalty.item() == pytest.approx(expected, abs=1e-6)


def _objective(variant, **kw):
    torch.manual_seed(0)
    cache = TeacherOutputs(torch.full((8, 3), 1 / 3), torch.randn(8, 3))
    return AdversarialObjective(3, variant, cache=cache, **kw).to("cpu")


@pytest.mark.parametrize("variant", ["gan", "wgan"])
def test_each_call_trains_the_discriminator_and_the_student_term_reaches_only_the_student(variant):
    objective = _objective(variant)
    model = nn.Linear(5, 3)
    before = [p.clone() for p in objective.discriminator.parameters()]
    logits, terms = objective(model, torch.randn(8, 5), torch.zeros(8, dtype=torch.long), torch.arange(8))
    assert set(terms) == {"discriminator", "hard", "adversarial"}
    assert not terms["discriminator"].requires_grad, "logged only: the student never optimises it"
    assert any(not torch.equal(a, b) for a, b in zip(before, objective.discriminator.parameters()))
    terms["adversarial"].backward()
    assert model.weight.grad is not None and model.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in objective.discriminator.parameters())


def test_pretrained_discriminator_freezes_and_its_state_round_trips():
    objective = _objective("pretrained", pretrain_steps=2)
    model = nn.Linear(5, 3)
    args = (torch.randn(8, 5), torch.zeros(8, dtype=torch.long), torch.arange(8))
    assert set(objective(model, *args)[1]) == {"discriminator", "hard"}, "pre-training: labels only"
    objective(model, *args)
    frozen = [p.clone() for p in objective.discriminator.parameters()]
    _, terms = objective(model, *args)
    assert set(terms) == {"hard", "adversarial"}
    assert all(torch.equal(a, b) for a, b in zip(frozen, objective.discriminator.parameters()))
    restored = _objective("pretrained", pretrain_steps=2)
    restored.load_state_dict(objective.state_dict())
    assert restored.steps == 3
    assert all(torch.equal(a, b) for a, b in zip(restored.discriminator.parameters(),
                                                  objective.discriminator.parameters()))


@pytest.fixture(scope="module")
def small_teacher(digits, tmp_path_factory):
    factory = small_mlp_factory(digits.input_shape, digits.num_classes, hidden=(64,))
    return Ensemble(factory, n_members=1, train=quick_train(4), seed=0, in_process=True, show_progress=False,
                    output_dir=tmp_path_factory.mktemp("teacher")).fit(digits.train, digits.val, digits.test)


def test_fitnets_trains_a_hint_stage_then_distils_from_it(small_teacher, digits, tmp_path):
    student = small_mlp_factory(digits.input_shape, digits.num_classes, hidden=(32,))
    distiller = Distiller(small_teacher, student, temperature=4, alpha=0.9, train=quick_train(3), method="fitnets",
                          fitnets={"hint_layer": "2", "guided_layer": "2", "epochs": 3}, in_process=True,
                          output_dir=tmp_path).fit(digits.train, digits.val, digits.test)
    hints = [r["train_hint"] for r in distiller.stage_results_["student_hint"].history]
    assert len(hints) == 3 and hints[-1] < hints[0], "the hint loss falls in stage 1"
    assert "train_soft" in distiller.results_[0].history[0]
    assert distiller.evaluate(digits.test)["student"].accuracy > 0.5


@pytest.mark.parametrize("variant", ["pretrained", "gan", "wgan"])
def test_adversarial_variants_train_a_student_and_log_each_term(variant, small_teacher, digits, tmp_path):
    student = small_mlp_factory(digits.input_shape, digits.num_classes, hidden=(32,))
    distiller = Distiller(small_teacher, student, train=quick_train(3), method="adversarial",
                          adversarial={"variant": variant, "pretrain_steps": 10}, in_process=True,
                          output_dir=tmp_path).fit(digits.train, digits.val, digits.test)
    last = distiller.results_[0].history[-1]
    assert {"train_hard", "train_adversarial"} <= set(last)
    assert last["train_loss"] == pytest.approx(last["train_hard"] + last["train_adversarial"])
    assert ("train_discriminator" in last) == (variant != "pretrained"), "frozen after pre-training"
    assert distiller.evaluate(digits.test)["student"].accuracy > 0.5
