"""Eq. 1 and the two ensemble means, against values computed by hand on batches of several different rows."""

import math

import pytest
import torch

from ensemble.training.soft_targets import arithmetic_mean, ensemble_probs, geometric_mean, temperature_softmax

# Two members' probabilities for three examples (rows); every row differs.
A = [[0.7, 0.2, 0.1], [0.5, 0.25, 0.25], [0.2, 0.2, 0.6]]
B = [[0.1, 0.6, 0.3], [0.1, 0.15, 0.75], [0.4, 0.4, 0.2]]


def _logits(probs):
    return torch.tensor(probs, dtype=torch.float64).log()


def test_temperature_softmax_matches_hand_values():
    z = torch.tensor([[2.0, 0.0, -2.0], [0.0, 0.0, 0.0], [4.0, 2.0, 0.0]])
    # T = 2: exp(z / 2) normalised per row: [e, 1, 1/e], [1, 1, 1], [e², e, 1].
    e = math.e
    rows = [[e, 1.0, 1 / e], [1.0, 1.0, 1.0], [e * e, e, 1.0]]
    expected = torch.tensor([[v / sum(row) for v in row] for row in rows])
    assert torch.allclose(temperature_softmax(z, 2.0), expected, atol=1e-6)
    # Higher temperature, softer distribution; T -> large gives uniform.
    assert temperature_softmax(z, 1000.0).max() < 0.34


def test_arithmetic_mean_is_the_mean_of_member_distributions():
    expected = torch.tensor([[0.4, 0.4, 0.2], [0.3, 0.2, 0.5], [0.3, 0.3, 0.4]], dtype=torch.float64)
    assert torch.allclose(arithmetic_mean([_logits(A), _logits(B)]), expected, atol=1e-9)


def test_geometric_mean_is_the_normalised_product_of_roots():
    roots = [[math.sqrt(a * b) for a, b in zip(ra, rb)] for ra, rb in zip(A, B)]
    expected = torch.tensor([[r / sum(row) for r in row] for row in roots], dtype=torch.float64)
    got = geometric_mean([_logits(A), _logits(B)])
    assert torch.allclose(got, expected, atol=1e-9)
    assert not torch.allclose(got, arithmetic_mean([_logits(A), _logits(B)]), atol=1e-3)


def _hand_means_at_t(za, zb, temperature):
    """Arithmetic and geometric means of softmax(za / T), softmax(zb / T), one row, in plain math."""
    ea = [math.exp(v / temperature) for v in za]
    eb = [math.exp(v / temperature) for v in zb]
    pa, pb = [v / sum(ea) for v in ea], [v / sum(eb) for v in eb]
    arithmetic = [(a + b) / 2 for a, b in zip(pa, pb)]
    roots = [math.sqrt(a * b) for a, b in zip(pa, pb)]
    return arithmetic, [r / sum(roots) for r in roots]


@pytest.mark.parametrize("mean", ["arithmetic", "geometric"])
def test_temperature_applies_before_averaging(mean):
    za = [[4.0, 0.0, 1.0], [0.0, 0.0, 6.0], [-2.0, 3.0, 1.0]]
    zb = [[0.0, 2.0, 0.0], [3.0, 1.0, 0.0], [1.0, 1.0, -4.0]]
    members = torch.tensor([za, zb], dtype=torch.float64)  # (members, examples, classes)
    hand = [_hand_means_at_t(a, b, 2.0) for a, b in zip(za, zb)]
    expected = torch.tensor([h[0] if mean == "arithmetic" else h[1] for h in hand], dtype=torch.float64)
    got = ensemble_probs(members, 2.0, mean)
    assert got.shape == (3, 3)
    assert torch.allclose(got, expected, atol=1e-9)


@pytest.mark.parametrize("mean, divergence", [("arithmetic", "forward"), ("geometric", "reverse")])
def test_each_mean_minimises_its_divergence(mean, divergence):
    """Σ KL(p_m ‖ q) is minimised by the arithmetic mean; Σ KL(q ‖ p_m) by the geometric one (PAPER.md)."""
    torch.manual_seed(0)
    members = torch.randn(4, 3, 5) * 2
    probs = torch.softmax(members, -1)

    def objective(q):
        if divergence == "forward":
            return (probs * (probs.log() - q.log())).sum()
        return (q * (q.log() - probs.log())).sum()

    best = ensemble_probs(members, 1.0, mean)
    assert best.shape == (3, 5)
    for _ in range(20):
        nudged = torch.softmax(best.log() + 0.05 * torch.randn(3, 5), -1)
        assert objective(best) <= objective(nudged) + 1e-7


def test_bad_temperature_and_mean_are_rejected():
    with pytest.raises(ValueError, match="temperature"):
        ensemble_probs(torch.zeros(2, 1, 3), 0.0)
    with pytest.raises(ValueError, match="mean"):
        ensemble_probs(torch.zeros(2, 1, 3), 1.0, "harmonic")
