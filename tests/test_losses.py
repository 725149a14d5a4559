"""Every distillation loss against numbers computed by hand, the KL direction, the T² scaling."""

import math

import pytest
import torch

from distill.losses import (
    LOSSES, TeacherOutputs, get_loss, hard_label_ce, logit_matching, soft_target_kl,
)
from ensemble.errors import ConfigError


def test_soft_target_kl_matches_a_hand_computed_value():
    # T = 2: student z = [2, 0] -> q_T = softmax([1, 0]) = [e/(e+1), 1/(e+1)]; teacher p = [0.5, 0.5].
    q = [math.e / (math.e + 1), 1 / (math.e + 1)]
    kl = 0.5 * math.log(0.5 / q[0]) + 0.5 * math.log(0.5 / q[1])
    got = soft_target_kl(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.5, 0.5]]), 2.0)
    assert float(got) == pytest.approx(4 * kl, rel=1e-6), "T² · KL(p ‖ q)"


def test_the_teacher_is_the_target_of_the_kl():
    """KL(p ‖ q) and KL(q ‖ p) differ; the loss must be the first (two public libraries swap them)."""
    teacher = torch.tensor([[0.9, 0.05, 0.05]])
    student_logits = torch.log(torch.tensor([[0.4, 0.3, 0.3]]))
    forward = (0.9 * math.log(0.9 / 0.4) + 2 * 0.05 * math.log(0.05 / 0.3))
    reverse = (0.4 * math.log(0.4 / 0.9) + 2 * 0.3 * math.log(0.3 / 0.05))
    got = float(soft_target_kl(student_logits, teacher, 1.0))
    assert got == pytest.approx(forward, rel=1e-6)
    assert abs(got - reverse) > 0.1


def test_soft_gradient_is_eq2_times_t_squared():
    """∂/∂z_i of KL(p_T ‖ q_T) is (1/T)(q_i − p_i) (Eq. 2); with the T² factor, T (q_i − p_i)."""
    z = torch.tensor([[1.0, -0.5, 2.0]], requires_grad=True)
    p = torch.tensor([[0.2, 0.3, 0.5]])
    for temperature in (1.0, 4.0, 20.0):
        z.grad = None
        soft_target_kl(z, p, temperature).backward()
        q = torch.softmax(z.detach() / temperature, 1)
        assert torch.allclose(z.grad, temperature * (q - p), atol=1e-6)


def test_high_temperature_kd_approaches_logit_matching():
    """Eq. 4: at high T with zero-meaned logits, T² KL ≈ ½ Σ (z − v)² / N (N = number of classes)."""
    torch.manual_seed(0)
    z, v = torch.randn(4, 10) * 0.5, torch.randn(4, 10) * 0.5
    v = v - v.mean(1, keepdim=True)
    z = z - z.mean(1, keepdim=True)
    teacher = torch.softmax(v / 100.0, 1)
    assert float(soft_target_kl(z, teacher, 100.0)) == pytest.approx(float(logit_matching(z, v)) / 10, rel=0.02)


def test_hard_label_ce_and_logit_matching_hand_values():
    assert float(hard_label_ce(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))) == pytest.approx(math.log(2))
    # [3, 1] -> [1, -1]; [0, 0] -> [0, 0]; ½ (1 + 1) = 1. A shift of all logits changes nothing.
    assert float(logit_matching(torch.tensor([[3.0, 1.0]]), torch.tensor([[5.0, 5.0]]))) == pytest.approx(1.0)


def test_kd_weights_the_soft_and_hard_terms_by_alpha():
    z = torch.tensor([[1.0, 0.0, -1.0]])
    y = torch.tensor([0])
    teacher = TeacherOutputs(probs=torch.tensor([[0.7, 0.2, 0.1]]))
    terms = get_loss("kd")(z, y, teacher, temperature=3.0, alpha=0.75)
    assert set(terms) == {"soft", "hard"}
    assert float(terms["soft"]) == pytest.approx(0.75 * float(soft_target_kl(z, teacher.probs, 3.0)))
    assert float(terms["hard"]) == pytest.approx(0.25 * float(hard_label_ce(z, y)))
    assert set(get_loss("kd")(z, y, teacher, 3.0, 1.0)) == {"soft"}
    assert set(get_loss("ce")(z, y, None, 1.0, 0.5)) == {"hard"}


def test_unknown_loss_names_the_config_key():
    assert {"kd", "ce", "logit_matching"} <= set(LOSSES)
    with pytest.raises(ConfigError, match="student.loss: unknown loss 'kl'"):
        get_loss("kl")
