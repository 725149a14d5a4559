"""Top-K soft targets: the loss against hand values, what it leaves out of the dense KL, and its gradient bound."""

import math

import torch

from distill.topk import systematic_draws, top_k, topk_soft_target_kl

# Three examples over four classes; the teacher's distributions at T are given directly.
P = [[0.5, 0.3, 0.15, 0.05], [0.1, 0.6, 0.12, 0.18], [0.28, 0.26, 0.24, 0.22]]  # no ties: top K is unique
Z = [[1.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.0], [0.3, -0.2, 0.1, 0.0]]


def _softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [x / sum(e) for x in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def _hand_topk_loss(k: int, t: float) -> float:
    """T² · KL on k + 1 bins (the teacher's top k, then the rest), averaged over the rows, in plain math."""
    total = 0.0
    for p, z in zip(P, Z):
        q = _softmax(z, t)
        top = sorted(range(4), key=lambda i: -p[i])[:k]
        rest_p = 1 - sum(p[i] for i in top)
        rest_q = 1 - sum(q[i] for i in top)
        total += _kl([p[i] for i in top] + [rest_p], [q[i] for i in top] + [rest_q])
    return t * t * total / len(P)


def test_top_k_loss_matches_hand_values_for_a_batch():
    probs, z = torch.tensor(P, dtype=torch.float64), torch.tensor(Z, dtype=torch.float64)
    for k, t in ((2, 1.0), (2, 2.0), (1, 3.0)):
        loss = topk_soft_target_kl(z, top_k(probs, k), t)
        assert math.isclose(float(loss), _hand_topk_loss(k, t), rel_tol=1e-9), (k, t)


def test_all_classes_kept_is_the_dense_kl():
    probs, z = torch.tensor(P, dtype=torch.float64), torch.tensor(Z, dtype=torch.float64)
    dense = 4.0 * sum(_kl(p, _softmax(row, 2.0)) for p, row in zip(P, Z)) / len(P)
    assert math.isclose(float(topk_soft_target_kl(z, top_k(probs, 4), 2.0)), dense, rel_tol=1e-9)


def test_all_classes_kept_in_float32_is_the_dense_kl_and_gradient():
    # Rows of 1,000 float32 probabilities whose sum rounds off 1: "the rest" must be empty, not 1e-7 with an infinite
    # log-ratio. The KL is checked in float64; d/dz of T² · KL(p ‖ softmax(z / T)), batch mean, is T · (q − p) / N.
    t, generator = 2.0, torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(8, 1000, generator=generator), dim=1)
    z = torch.randn(8, 1000, generator=generator, requires_grad=True)
    loss = topk_soft_target_kl(z, top_k(probs, 1000), t)
    loss.backward()
    p, q = probs.double(), torch.softmax(z.detach().double() / t, dim=1)
    assert math.isclose(loss.item(), float(t * t * (p * (p.log() - q.log())).sum(1).mean()), rel_tol=1e-5)
    assert torch.allclose(z.grad.double(), t * (q - p) / len(p), atol=1e-7)


def test_what_top_k_leaves_out_is_the_rest_mass_times_the_rest_kl():
    # L_dense − L_K = T² · R · KL(p_rest / R ‖ q_rest / Q_rest), row by row (checked here on one row at a time).
    t, k = 2.0, 2
    for p, z in zip(P, Z):
        q = _softmax(z, t)
        top = sorted(range(4), key=lambda i: -p[i])[:k]
        others = [i for i in range(4) if i not in top]
        rest_p, rest_q = sum(p[i] for i in others), sum(q[i] for i in others)
        left_out = t * t * rest_p * _kl([p[i] / rest_p for i in others], [q[i] / rest_q for i in others])
        dense = t * t * _kl(p, q)
        topk = float(topk_soft_target_kl(torch.tensor([z], dtype=torch.float64),
                                         top_k(torch.tensor([p], dtype=torch.float64), k), t))
        assert math.isclose(dense - topk, left_out, rel_tol=1e-9, abs_tol=1e-12)


def test_gradient_error_is_bounded_by_twice_t_times_the_rest_mass():
    torch.manual_seed(0)
    t, k = 4.0, 5
    teacher = torch.softmax(torch.randn(6, 50, dtype=torch.float64) * 3 / t, dim=1)
    z = torch.randn(6, 50, dtype=torch.float64, requires_grad=True)
    targets = top_k(teacher, k)
    # Per-example gradients: the losses are batch means, so scale by the batch size.
    (grad_k,) = torch.autograd.grad(len(z) * topk_soft_target_kl(z, targets, t), z)
    dense = (teacher * (teacher.log() - torch.log_softmax(z / t, 1))).sum(1).sum() * t * t
    (grad_dense,) = torch.autograd.grad(dense, z)
    error = (grad_dense - grad_k).abs().sum(dim=1)
    bound = 2 * t * targets.rest_mass
    assert (targets.rest_mass > 0.05).all(), "a case where top-K really drops mass"
    assert (error <= bound + 1e-12).all() and (error > 0).all()


def test_sampled_rest_makes_the_loss_the_dense_kl_when_the_draws_are_exact():
    # Six classes, K = 2, S = 4 draws from the rest. Each row's rest shares are multiples of 1/4, so systematic draws
    # hit each class exactly S·share times (offsets from rows 1-3 keep every point off a boundary): the estimate of the
    # left-out KL is then exact, and the loss and its gradient are the dense ones. The last row has no rest at all.
    p = [[0.4, 0.3, 0.15, 0.075, 0.075, 0.0], [0.05, 0.05, 0.1, 0.5, 0.3, 0.0], [0.75, 0.25, 0.0, 0.0, 0.0, 0.0]]
    z = [[0.2, 1.0, -0.5, 0.3, 0.0, 0.7], [1.0, -1.0, 0.5, 0.0, 0.4, -0.2], [0.0, 0.1, 0.2, -0.3, 0.0, 0.5]]
    t = 2.0
    targets = top_k(torch.tensor(p, dtype=torch.float64), 2, rest_samples=4, first_row=1)
    assert targets.rest_samples.tolist()[:2] == [[2, 2, 3, 4], [0, 1, 2, 2]]
    logits = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    loss = topk_soft_target_kl(logits, targets, t)
    loss.backward()
    dense = t * t * sum(_kl(row_p, _softmax(row_z, t)) for row_p, row_z in zip(p, z)) / len(p)
    assert math.isclose(loss.item(), dense, rel_tol=1e-9)
    one_bin = float(topk_soft_target_kl(logits.detach(), top_k(torch.tensor(p, dtype=torch.float64), 2), t))
    assert dense - one_bin > 0.01, "without the draws the rest's own KL is missing"
    q = torch.softmax(logits.detach() / t, dim=1)
    assert torch.allclose(logits.grad, t * (q - torch.tensor(p, dtype=torch.float64)) / len(p), atol=1e-12)


def test_systematic_draws_hit_each_class_floor_or_ceil_of_its_expected_count():
    weights = torch.softmax(torch.randn(50, 30, generator=torch.Generator().manual_seed(1)), dim=1)
    weights[:, :3] = 0  # classes that must never be drawn
    draws = systematic_draws(weights, 16, first_row=7)
    counts = torch.zeros(50, 30).scatter_add_(1, draws, torch.ones(50, 16))
    expected = 16 * weights / weights.sum(1, keepdim=True)
    assert (counts >= expected.floor() - 1e-9).all() and (counts <= expected.ceil() + 1e-9).all()
    assert counts[:, :3].sum() == 0
    assert torch.equal(systematic_draws(weights[10:20], 16, first_row=17), draws[10:20]), "a row's draws: its id"
