"""Combined inference (paper §5.4, Eq. 5): the full distribution q that agrees with the generalist and the
active specialists.

For one example, with generalist distribution ``p_g`` and active specialists ``A``::

    q* = argmin_q  KL(p_g ‖ q) + Σ_{m ∈ A} KL(p_m ‖ q^m)                                     (Eq. 5)

where ``q^m`` collapses q onto specialist m's classes plus a dustbin holding ``Σ_{j ∉ S_m} q_j``. There is
no closed form. Two solvers, both batched over examples (the objective is a sum of per-example terms):

- ``"em"`` (default): Eq. 5 is the negative log-likelihood of q given "observations" p_g and p_m in which a
  specialist's dustbin mass is a *coarsened* observation ("some class outside S_m"). Expectation-
  maximisation shares that mass among the outside classes in proportion to the current q and renormalises::

      q_i ← ( p_g,i + Σ_{m∈A} ([i ∈ S_m] p_m,i + [i ∉ S_m] p_m,dustbin · q_i / Σ_{j∉S_m} q_j) ) / (1 + |A|)

  Every step lowers Eq. 5. With overlapping groups plain EM can crawl (tens of thousands of steps), so it is
  accelerated by SQUAREM and stops when the Frank-Wolfe duality gap, an upper bound of how far Eq. 5 is above its
  minimum, is below ``tolerance`` nats (:mod:`specialists.eq5_em`).
- ``"lbfgs"``: q = softmax(z) and the logits z are optimised by L-BFGS on :func:`eq5_objective`.

In the objective the dustbin is a sum of *probabilities*, computed as a ``logsumexp`` of log-probabilities,
so the specialist terms pass gradient to every class.
"""

from __future__ import annotations

import torch

from .eq5_em import solve_em


def collapse_log_probs(log_q: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """``log q^m``: (N, C) log-probabilities -> (N, |S_m| + 1): the group's classes, then log Σ_{j∉S_m} q_j."""
    outside = torch.ones(log_q.shape[1], dtype=torch.bool, device=log_q.device)
    outside[group] = False
    if outside.any():
        dustbin = torch.logsumexp(log_q[:, outside], dim=1, keepdim=True)
    else:  # a group of every class has an empty dustbin
        dustbin = torch.full_like(log_q[:, :1], float("-inf"))
    return torch.cat([log_q[:, group], dustbin], dim=1)


def kl_divergence(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Row-wise ``KL(p ‖ q) = Σ_i p_i (log p_i − log q_i)``, with ``0 · log 0 = 0`` on both sides."""
    safe_log_p = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))
    terms = torch.where(p > 0, p * (safe_log_p - log_q), torch.zeros_like(p))
    return terms.sum(dim=1)


def eq5_objective(
    z: torch.Tensor,
    generalist_probs: torch.Tensor,
    specialist_probs: list[torch.Tensor],
    groups: list[torch.Tensor],
    active: torch.Tensor,
) -> torch.Tensor:
    """Per-example value of Eq. 5 at ``q = softmax(z)``: ``KL(p_g ‖ q) + Σ_m active_m · KL(p_m ‖ q^m)``."""
    log_q = torch.log_softmax(z, dim=1)
    loss = kl_divergence(generalist_probs, log_q)
    for m, (p_m, group) in enumerate(zip(specialist_probs, groups)):
        term = kl_divergence(p_m, collapse_log_probs(log_q, group))
        loss = loss + torch.where(active[:, m], term, torch.zeros_like(term))
    return loss


def active_specialists(generalist_probs: torch.Tensor, groups: list[torch.Tensor], top_n: int = 1) -> torch.Tensor:
    """(N, M) bool: specialist m is active when its group holds one of the generalist's top-n classes."""
    top = generalist_probs.topk(top_n, dim=1).indices
    return torch.stack([torch.isin(top, group).any(dim=1) for group in groups], dim=1)


def combine(
    generalist_probs: torch.Tensor,
    specialist_probs: list[torch.Tensor],
    groups: list[torch.Tensor],
    active: torch.Tensor,
    max_iter: int = 10_000,
    tolerance: float = 1e-9,
    solver: str = "em",
) -> tuple[torch.Tensor, dict]:
    """Solve Eq. 5 for every example with an active specialist; the others keep the generalist's q.

    ``specialist_probs[m]`` holds rows for all N examples (rows where m is inactive are ignored).
    Returns ``q`` (N, C) and ``{"iterations": ..., "optimised_examples": ...}``.
    """
    q = generalist_probs.clone()
    rows = active.any(dim=1)
    if not rows.any():
        return q, {"iterations": 0, "optimised_examples": 0}
    args = (generalist_probs[rows], [p[rows] for p in specialist_probs], groups, active[rows], max_iter, tolerance)
    if solver == "em":
        q[rows], iterations = solve_em(*args)
    elif solver == "lbfgs":
        q[rows], iterations = _solve_lbfgs(*args)
    else:
        raise ValueError(f"solver must be 'em' or 'lbfgs', got {solver!r}")
    return q, {"iterations": iterations, "optimised_examples": int(rows.sum())}


def _solve_lbfgs(p_g, p_m, groups, active, max_iter, tolerance) -> tuple[torch.Tensor, int]:
    # Start at the generalist's answer: where the specialists agree with it, nothing moves.
    z = torch.log(p_g.clamp_min(torch.finfo(p_g.dtype).tiny)).detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS([z], lr=1.0, max_iter=max_iter, tolerance_grad=tolerance, tolerance_change=1e-12,
                                  history_size=10, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = eq5_objective(z, p_g, p_m, groups, active).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return torch.softmax(z.detach(), dim=1), int(optimizer.state[z].get("n_iter", 0))
