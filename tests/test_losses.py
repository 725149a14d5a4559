"""Every distillation loss against numbers computed by hand, the KL direction, the T² scaling.

Every hand value uses a batch of three different rows, so a loss that sums over the batch instead of
averaging (or averages the wrong axis) fails. The references below are plain-math formulas, not project code.
"""

import math

import pytest
import torch

from distill.losses import (
    LOSSES, TeacherOutputs, get_loss, hard_label_ce, logit_matching, soft_target_kl,
)
from ensemble.base.errors import ConfigError


def _softmax(z, temperature=1.0):
    e = [math.exp(v / temperature) for v in z]
    return [v / sum(e) for v in e]


def _kl(p, q):
    """KL(p ‖ q) of two lists of probabilities."""
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def _ce(z, label):
    """−log softmax(z)_label."""
    return -math.log(_softmax(z)[label])


def _mean(values):
    return sum(values) / len(values)


# Three examples with different logits, teachers and labels.
Z = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.5], [3.0, 0.0, 0.0]]
P = [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]
Y = [0, 1, 2]


def test_soft_target_kl_matches_a_hand_computed_value():
    # T = 2: row 1 q_T = softmax([1, 0]) = [e/(e+1), 1/(e+1)] against [0.5, 0.5]; row 2 q_T = [0.5, 0.5]
    # against [0.9, 0.1]; row 3 q_T = softmax([0, 2]) against [0.2, 0.8]. Loss = T² · mean_rows KL(p ‖ q_T).
    z = [[2.0, 0.0], [0.0, 0.0], [0.0, 4.0]]
    p = [[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]
    e = math.e
    kls = [0.5 * math.log(0.5 * (e + 1) / e) + 0.5 * math.log(0.5 * (e + 1)),
           0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5),
           0.2 * math.log(0.2 * (1 + e**2)) + 0.8 * math.log(0.8 * (1 + e**2) / e**2)]
    got = float(soft_target_kl(torch.tensor(z), torch.tensor(p), 2.0))
    assert got == pytest.approx(4 * sum(kls) / 3, rel=1e-6), "T² · batch mean of KL(p ‖ q)"


def test_the_teacher_is_the_target_of_the_kl():
    """KL(p ‖ q) and KL(q ‖ p) differ; the loss must be the first (two public libraries swap them)."""
    teacher = [[0.9, 0.05, 0.05], [0.05, 0.8, 0.15], [0.1, 0.2, 0.7]]
    student = [[0.4, 0.3, 0.3], [0.3, 0.4, 0.3], [0.5, 0.3, 0.2]]
    forward = _mean([_kl(p, q) for p, q in zip(teacher, student)])
    reverse = _mean([_kl(q, p) for p, q in zip(teacher, student)])
    got = float(soft_target_kl(torch.tensor(student).log(), torch.tensor(teacher), 1.0))
    assert got == pytest.approx(forward, rel=1e-6)
    assert abs(got - reverse) > 0.1


def test_soft_gradient_is_eq2_times_t_squared():
    """∂/∂z_i of KL(p_T ‖ q_T) is (1/T)(q_i − p_i) (Eq. 2); with the T² factor and the batch mean, T (q_i − p_i) / N."""
    z = torch.tensor(Z, requires_grad=True)
    p = torch.tensor(P)
    for temperature in (1.0, 4.0, 20.0):
        z.grad = None
        soft_target_kl(z, p, temperature).backward()
        q = torch.tensor([_softmax(row, temperature) for row in Z])
        assert torch.allclose(z.grad, temperature * (q - p) / 3, atol=1e-6)


def test_high_temperature_kd_approaches_logit_matching():
    """Eq. 4: at high T with zero-meaned logits, T² KL ≈ ½ Σ (z − v)² / C (C = number of classes), batch mean."""
    torch.manual_seed(0)
    z, v = torch.randn(4, 10) * 0.5, torch.randn(4, 10) * 0.5
    v = v - v.mean(1, keepdim=True)
    z = z - z.mean(1, keepdim=True)
    teacher = torch.softmax(v / 100.0, 1)
    caruana = float(0.5 * ((z - v) ** 2).sum(1).mean())
    assert float(soft_target_kl(z, teacher, 100.0)) == pytest.approx(caruana / 10, rel=0.02)


def test_hard_label_ce_hand_values():
    # Row 1: uniform over 3 -> log 3. Row 2: −log(e²/(e² + 2)) = log(1 + 2e⁻²). Row 3: −log(e⁻¹/(e + 1 + e⁻¹)).
    z = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 0.0, -1.0]])
    expected = (math.log(3) + math.log(1 + 2 * math.exp(-2)) + 1 + math.log(math.e + 1 + 1 / math.e)) / 3
    assert float(hard_label_ce(z, torch.tensor([1, 0, 2]))) == pytest.approx(expected, rel=1e-6)


def test_logit_matching_hand_values():
    # Zero-meaned: [3, 1] -> [1, −1] vs [0, 0]: ½·2 = 1. [0, 0] vs [2, 0] -> [1, −1]: 1. [4, 0] -> [2, −2] vs 0: 4.
    # Batch mean 2 (a sum would be 6; without zero-meaning row 1 alone would be 10).
    z = torch.tensor([[3.0, 1.0], [0.0, 0.0], [4.0, 0.0]])
    v = torch.tensor([[5.0, 5.0], [2.0, 0.0], [0.0, 0.0]])
    assert float(logit_matching(z, v)) == pytest.approx(2.0)
    terms = get_loss("logit_matching")(z, torch.tensor([0, 1, 0]), TeacherOutputs(logits=v), 1.0, 0.8)
    assert float(terms["logits"]) == pytest.approx(0.8 * 2.0)
    hard = _mean([_ce([3.0, 1.0], 0), _ce([0.0, 0.0], 1), _ce([4.0, 0.0], 0)])
    assert float(terms["hard"]) == pytest.approx(0.2 * hard, rel=1e-6)


def test_kd_weights_the_soft_and_hard_terms_by_alpha():
    """``α · T² · mean KL(p ‖ softmax(z / T)) + (1 − α) · mean CE(y, softmax(z))``, by hand at T = 3, α = 0.75."""
    z, y = torch.tensor(Z), torch.tensor(Y)
    teacher = TeacherOutputs(probs=torch.tensor(P))
    soft = 0.75 * 9 * _mean([_kl(p, _softmax(row, 3.0)) for p, row in zip(P, Z)])
    hard = 0.25 * _mean([_ce(row, label) for row, label in zip(Z, Y)])
    terms = get_loss("kd")(z, y, teacher, temperature=3.0, alpha=0.75)
    assert set(terms) == {"soft", "hard"}
    assert float(terms["soft"]) == pytest.approx(soft, rel=1e-6)
    assert float(terms["hard"]) == pytest.approx(hard, rel=1e-6)
    only_soft = get_loss("kd")(z, y, teacher, 3.0, 1.0)
    assert set(only_soft) == {"soft"} and float(only_soft["soft"]) == pytest.approx(soft / 0.75, rel=1e-6)
    only_hard = get_loss("ce")(z, y, None, 1.0, 0.5)
    assert set(only_hard) == {"hard"} and float(only_hard["hard"]) == pytest.approx(hard / 0.25, rel=1e-6)


def test_unknown_loss_names_the_config_key():
    assert {"kd", "ce", "logit_matching"} <= set(LOSSES)
    with pytest.raises(ConfigError, match="student.loss: unknown loss 'kl'"):
        get_loss("kl")
