"""Eq. 5 against hand-checkable cases, scipy, and the gradient through the specialist terms."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from specialists.combine import active_specialists, collapse_log_probs, combine, eq5_objective

@pytest.fixture(autouse=True)
def float64():
    """Tight comparisons need double precision; restored so other tests keep float32."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_collapse_keeps_the_group_and_sums_the_rest_into_the_dustbin():
    q = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    got = collapse_log_probs(q.log(), torch.tensor([1, 3])).exp()
    assert torch.allclose(got, torch.tensor([[0.2, 0.4, 0.4]]))


def test_no_active_specialist_leaves_the_generalist_untouched():
    p_g = torch.softmax(torch.randn(6, 5), 1)
    p_m = [torch.softmax(torch.randn(6, 3), 1)]
    q, info = combine(p_g, p_m, [torch.tensor([0, 1])], torch.zeros(6, 1, dtype=torch.bool))
    assert torch.equal(q, p_g) and info["iterations"] == 0


SOLVERS = pytest.mark.parametrize("solver", ["em", "lbfgs"])


@SOLVERS
def test_models_covering_every_class_combine_to_the_arithmetic_mean(solver):
    torch.manual_seed(0)
    p_g = torch.softmax(torch.randn(4, 5), 1)
    full = torch.arange(5)
    p_ms = [torch.cat([torch.softmax(torch.randn(4, 5), 1), torch.zeros(4, 1)], 1) for _ in range(2)]
    q, _ = combine(p_g, p_ms, [full, full], torch.ones(4, 2, dtype=torch.bool), max_iter=5000, tolerance=1e-10,
                   solver=solver)
    expected = (p_g + p_ms[0][:, :5] + p_ms[1][:, :5]) / 3
    assert torch.allclose(q, expected, atol=1e-6)


def _eq5_reference(q, p_g, p_ms, groups, active):
    """Eq. 5 written out in numpy, per example: KL(p_g ‖ q) + Σ_{m active} KL(p_m ‖ [q_S_m, Σ_{j∉S_m} q_j])."""
    def kl(p, r):
        return np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / r), 0.0).sum(axis=-1)

    q = np.asarray(q, dtype=np.float64)
    total = kl(np.asarray(p_g), q)
    for m, (p_m, group) in enumerate(zip(p_ms, groups)):
        outside = [j for j in range(q.shape[-1]) if j not in set(group)]
        collapsed = np.concatenate([q[..., group], q[..., outside].sum(axis=-1, keepdims=True)], axis=-1)
        total = total + np.asarray(active)[..., m] * kl(np.asarray(p_m), collapsed)
    return total


def _scipy_optimum(p_g, p_ms, groups, active):
    """argmin over q = softmax(z) of the reference Eq. 5, by Nelder-Mead on z (one example)."""
    def f(z):
        q = np.exp(z - z.max())
        return float(_eq5_reference(q / q.sum(), p_g, p_ms, groups, active))

    best = minimize(f, np.log(p_g), method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 40000, "maxfev": 40000})
    q = np.exp(best.x - best.x.max())
    return q / q.sum(), best.fun


def test_eq5_objective_matches_the_reference():
    rng = np.random.default_rng(2)
    groups = [[0, 1], [1, 2, 3]]
    p_g = torch.softmax(torch.tensor(rng.normal(size=(4, 5))), 1)
    p_ms = [torch.softmax(torch.tensor(rng.normal(size=(4, len(g) + 1))), 1) for g in groups]
    active = torch.tensor([[True, True], [True, False], [False, True], [False, False]])
    z = torch.tensor(rng.normal(size=(4, 5)))
    got = eq5_objective(z, p_g, p_ms, [torch.tensor(g) for g in groups], active)
    reference = _eq5_reference(torch.softmax(z, 1).numpy(), p_g.numpy(), [p.numpy() for p in p_ms], groups,
                               active.numpy())
    assert np.allclose(got.numpy(), reference, atol=1e-12)


@SOLVERS
def test_matches_scipy_on_a_small_case_with_overlapping_specialists(solver):
    """Classes {0, 1} and {1, 2, 3} overlap at 1; three examples with different active sets."""
    rng = np.random.default_rng(1)
    p_g = torch.softmax(torch.tensor(rng.normal(size=(3, 5))), 1)
    groups = [[0, 1], [1, 2, 3]]
    p_ms = [torch.softmax(torch.tensor(rng.normal(size=(3, 3)) * 2), 1),
            torch.softmax(torch.tensor(rng.normal(size=(3, 4)) * 2), 1)]
    active = torch.tensor([[True, True], [True, False], [False, True]])
    q, _ = combine(p_g, p_ms, [torch.tensor(g) for g in groups], active, max_iter=5000, tolerance=1e-12,
                   solver=solver)
    for n in range(3):
        rows = (p_g[n].numpy(), [p[n].numpy() for p in p_ms], groups, active[n].numpy())
        best_q, best_value = _scipy_optimum(*rows)
        assert np.allclose(q[n].numpy(), best_q, atol=1e-4), n
        assert _eq5_reference(q[n].numpy(), *rows) <= best_value + 1e-9, n
        assert not np.allclose(q[n].numpy(), rows[0], atol=1e-3), "the specialists moved the answer"


@SOLVERS
def test_one_specialist_has_a_closed_form_optimum(solver):
    """One active specialist on S = {0, 1} of 4 classes: Eq. 5 is maximising
    Σ_i p_g,i log q_i + Σ_{i∈S} p_m,i log q_i + p_m,dustbin log(q_2 + q_3), so by hand
    q_i = (p_g,i + p_m,i) / 2 on S, and the outside mass (p_g,2 + p_g,3 + p_m,dustbin) / 2 is shared in the
    ratio p_g,2 : p_g,3. Row 1: q = [0.45, 0.25, 0.3·¾, 0.3·¼]. Row 2: [0.35, 0.15, 0.5·⅝, 0.5·⅜].
    Row 3's specialist is inactive: the generalist's answer stands.
    """
    p_g = torch.tensor([[0.4, 0.2, 0.3, 0.1], [0.1, 0.1, 0.5, 0.3], [0.25, 0.25, 0.25, 0.25]])
    p_m = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.2, 0.2], [0.9, 0.05, 0.05]])
    active = torch.tensor([[True], [True], [False]])
    q, info = combine(p_g, [p_m], [torch.tensor([0, 1])], active, max_iter=5000, tolerance=1e-12, solver=solver)
    expected = torch.tensor([[0.45, 0.25, 0.225, 0.075], [0.35, 0.15, 0.3125, 0.1875], [0.25, 0.25, 0.25, 0.25]])
    assert torch.allclose(q, expected, atol=1e-6)
    assert info["optimised_examples"] == 2


def test_em_lowers_the_objective_at_every_step_and_agrees_with_lbfgs():
    torch.manual_seed(3)
    n, groups = 50, [torch.tensor([0, 1, 2]), torch.tensor([2, 3]), torch.tensor([5, 6, 7])]
    p_g = torch.softmax(torch.randn(n, 8) * 2, 1)
    p_ms = [torch.softmax(torch.randn(n, len(g) + 1) * 2, 1) for g in groups]
    active = torch.rand(n, 3) > 0.4
    values = []
    for steps in (1, 2, 4, 8, 16):
        q, _ = combine(p_g, p_ms, groups, active, max_iter=steps, tolerance=0.0, solver="em")
        values.append(float(_eq5_reference(q.numpy(), p_g.numpy(), [p.numpy() for p in p_ms],
                                           [g.tolist() for g in groups], active.numpy()).sum()))
    assert all(later <= earlier + 1e-12 for earlier, later in zip(values, values[1:]))
    q_em, info = combine(p_g, p_ms, groups, active, max_iter=5000, tolerance=1e-12, solver="em")
    q_lbfgs, _ = combine(p_g, p_ms, groups, active, max_iter=1000, tolerance=1e-12, solver="lbfgs")
    assert torch.allclose(q_em, q_lbfgs, atol=1e-5)
    assert info["optimised_examples"] == int(active.any(1).sum())


def test_the_gradient_reaches_q_through_the_specialist_terms():
    """At q = p_g the generalist term is at its minimum, so all the gradient comes from the specialist.

    Hand-computed for group {0, 1}, p_g = q = [0.5, 0.3, 0.2], p_m = [0.6, 0.2 | dustbin 0.2]:
    ∂/∂z_i = q_i − [i∈S] p_m,i − [i∉S] p_m,dustbin · q_i / q_dustbin = [−0.1, 0.1, 0.0].
    """
    p_g = torch.tensor([[0.5, 0.3, 0.2]])
    p_m = torch.tensor([[0.6, 0.2, 0.2]])
    z = p_g.log().clone().requires_grad_(True)
    eq5_objective(z, p_g, [p_m], [torch.tensor([0, 1])], torch.ones(1, 1, dtype=torch.bool)).sum().backward()
    assert torch.allclose(z.grad, torch.tensor([[-0.1, 0.1, 0.0]]), atol=1e-12)
    # The dustbin passes gradient to the classes outside the group too.
    p_m2 = torch.tensor([[0.5, 0.2, 0.3]])
    z2 = p_g.log().clone().requires_grad_(True)
    eq5_objective(z2, p_g, [p_m2], [torch.tensor([0, 1])], torch.ones(1, 1, dtype=torch.bool)).sum().backward()
    assert z2.grad[0, 2] == pytest.approx(0.2 - 0.3 * 0.2 / 0.2)


def test_inactive_specialists_add_nothing():
    p_g = torch.tensor([[0.5, 0.3, 0.2]])
    z = torch.randn(1, 3)
    with_off = eq5_objective(z, p_g, [torch.tensor([[0.9, 0.05, 0.05]])], [torch.tensor([0, 1])],
                             torch.zeros(1, 1, dtype=torch.bool))
    assert torch.allclose(with_off, (p_g * (p_g.log() - torch.log_softmax(z, 1))).sum(1))


def test_active_specialists_follow_the_generalists_top_classes():
    p_g = torch.tensor([[0.6, 0.3, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]])
    groups = [torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([2, 3])]
    assert active_specialists(p_g, groups, 1).tolist() == [[True, False, False], [False, False, True]]
    assert active_specialists(p_g, groups, 2).tolist() == [[True, True, False], [False, True, True]]


def _optimality_gap(q, p_g, p_ms, groups, active) -> np.ndarray:
    """Per row, ``max_i h_i − n`` with ``h = −∇ Eq. 5`` written out in numpy: an upper bound of how far q is
    from the minimum (Eq. 5 is convex on the simplex). Zero exactly at the optimum."""
    q, p_g = np.asarray(q, dtype=np.float64), np.asarray(p_g, dtype=np.float64)
    h = p_g / q
    n = np.ones(len(q))
    for m, (p_m, group) in enumerate(zip(p_ms, groups)):
        on = np.asarray(active[:, m], dtype=np.float64)
        p_m = np.asarray(p_m, dtype=np.float64)
        inside = np.zeros(q.shape[1], dtype=bool)
        inside[list(group)] = True
        h[:, list(group)] += on[:, None] * p_m[:, :-1] / q[:, list(group)]  # p_m's columns follow the group's order
        h[:, ~inside] += (on * p_m[:, -1] / q[:, ~inside].sum(1))[:, None]
        n += on
    return h.max(1) - n


def test_overlapping_disagreeing_specialists_reach_a_certified_optimum():
    # Three overlapping groups, sharp specialists that disagree with a sharp generalist, top-3 activation: the case
    # where plain EM crawls (its 100 steps stopped ~0.2 away in q) and q barely moves per step.
    torch.manual_seed(0)
    n, classes = 300, 12
    groups = [list(range(0, 8)), list(range(4, 12)), list(range(8, 12)) + list(range(0, 4))]
    p_g = torch.softmax(torch.randn(n, classes, dtype=torch.float64) * 4, 1)
    p_ms = [torch.softmax(torch.randn(n, len(g) + 1, dtype=torch.float64) * 8, 1) for g in groups]
    tensors = [torch.tensor(g) for g in groups]
    active = active_specialists(p_g, tensors, top_n=3)
    q, info = combine(p_g, p_ms, tensors, active)  # the defaults
    assert info["iterations"] < 1000
    assert _optimality_gap(q, p_g, p_ms, groups, active).max() < 1e-8
    plain_em = p_g.clone()
    for _ in range(100):  # the old defaults: 100 plain EM steps, written out
        plain_em = _em_step_reference(plain_em, p_g, p_ms, groups, active)
    assert _optimality_gap(plain_em, p_g, p_ms, groups, active).max() > 1e-3, "the certificate can fail"
    assert np.abs(np.asarray(q) - np.asarray(plain_em)).max() > 0.05, "and the old answer was far off"
    assert (_eq5_reference(q, p_g, p_ms, groups, active) <= _eq5_reference(plain_em, p_g, p_ms, groups, active)
            + 1e-12).all()


def _em_step_reference(q, p_g, p_ms, groups, active):
    counts = p_g.clone()
    for m, (p_m, group) in enumerate(zip(p_ms, groups)):
        on = active[:, m].double()
        inside = torch.zeros(q.shape[1], dtype=torch.bool)
        inside[group] = True
        counts[:, group] += on[:, None] * p_m[:, :-1]
        counts[:, ~inside] += on[:, None] * p_m[:, -1:] * q[:, ~inside] / q[:, ~inside].sum(1, keepdim=True)
    return counts / counts.sum(1, keepdim=True)
