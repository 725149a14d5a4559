"""Eq. 1 and the two ensemble means, against values computed by hand."""

import math

import pytest
import torch

from ensemble.soft_targets import arithmetic_mean, ensemble_probs, geometric_mean, temperature_softmax


def test_temperature_softmax_matches_hand_values():
    z = torch.tensor([[2.0, 0.0, -2.0]])
    # T = 2: exp(1), exp(0), exp(-1) normalised.
    e = [math.e, 1.0, 1 / math.e]
    expected = torch.tensor([[v / sum(e) for v in e]])
    assert torch.allclose(temperature_softmax(z, 2.0), expected, atol=1e-6)
    # Higher temperature, softer distribution; T -> large gives uniform.
    assert temperature_softmax(z, 1000.0).max() < 0.34


def test_arithmetic_mean_is_the_mean_of_member_distributions():
    a = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    b = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    expected = torch.tensor([[0.4, 0.4, 0.2]])
    assert torch.allclose(arithmetic_mean([a, b]), expected, atol=1e-6)


def test_geometric_mean_is_the_normalised_product_of_roots():
    p = torch.tensor([0.7, 0.2, 0.1])
    q = torch.tensor([0.1, 0.6, 0.3])
    roots = torch.tensor([math.sqrt(0.07), math.sqrt(0.12), math.sqrt(0.03)])
    expected = roots / roots.sum()
    got = geometric_mean([p.log()[None], q.log()[None]])[0]
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, (p + q) / 2, atol=1e-3)


@pytest.mark.parametrize("mean, divergence", [("arithmetic", "forward"), ("geometric", "reverse")])
def test_each_mean_minimises_its_divergence(mean, divergence):
    """Σ KL(p_m ‖ q) is minimised by the arithmetic mean; Σ KL(q ‖ p_m) by the geometric one (PAPER.md)."""
    torch.manual_seed(0)
    members = torch.randn(4, 1, 5) * 2
    probs = torch.softmax(members, -1)

    def objective(q):
        if divergence == "forward":
            return (probs * (probs.log() - q.log())).sum()
        return (q * (q.log() - probs.log())).sum()

    best = ensemble_probs(members, 1.0, mean)[0]
    for _ in range(20):
        nudged = torch.softmax(best.log() + 0.05 * torch.randn(5), -1)
        assert objective(best) <= objective(nudged) + 1e-7


def test_temperature_applies_before_averaging():
    members = torch.tensor([[[4.0, 0.0]], [[0.0, 2.0]]])
    got = ensemble_probs(members, 2.0, "arithmetic")
    expected = (torch.softmax(torch.tensor([2.0, 0.0]), 0) + torch.softmax(torch.tensor([0.0, 1.0]), 0)) / 2
    assert torch.allclose(got[0], expected, atol=1e-6)


def test_bad_temperature_and_mean_are_rejected():
    with pytest.raises(ValueError, match="temperature"):
        ensemble_probs(torch.zeros(2, 1, 3), 0.0)
    with pytest.raises(ValueError, match="mean"):
        ensemble_probs(torch.zeros(2, 1, 3), 1.0, "harmonic")
