"""Eq. 5 by expectation-maximisation, accelerated by SQUAREM and stopped on a bound of the objective's gap.

Write ``b_i = p_g,i + Σ_{m∈A, i∈S_m} p_m,i`` (the fixed counts) and ``d_m = p_m,dustbin`` for each active m. Up to a
constant, Eq. 5 is ``f(q) = −Σ_i b_i log q_i − Σ_m d_m log Σ_{j∉S_m} q_j``: convex on the simplex. Its negative
gradient is ``h_i = b_i / q_i + Σ_{m: i∉S_m} d_m / Σ_{j∉S_m} q_j``, and ``Σ_i q_i h_i = n = 1 + |A|`` everywhere, so

- the EM step is ``q_i ← q_i h_i / n`` (a fixed point is exactly a point where every ``h_i`` with ``q_i > 0``
  equals n), and
- the Frank-Wolfe duality gap ``max_i h_i − n`` bounds ``f(q) − f(q*)`` from above (convexity): the solver stops
  when every row's gap is below ``tolerance`` (nats), not when q merely stops moving. With overlapping groups EM
  can move very slowly (a fixed point tens of thousands of steps away) while each step changes q by less than 1e-6.

SQUAREM (Varadhan & Roland, 2008, scheme S3) extrapolates along two EM steps, ``q' = q − 2αr + α²v`` with
``r = F(q) − q``, ``v = F(F(q)) − 2F(q) + q`` and ``α = −‖r‖/‖v‖`` (at most −1), then takes one EM step from q'; a
row whose extrapolation leaves the simplex or raises f keeps the plain double EM step, so f never rises.
Computed in float64: the gap's last digits are differences of numbers near n.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EMProblem:
    base: torch.Tensor  # (N, C) b: p_g plus each active specialist's in-group probabilities
    dustbin: torch.Tensor  # (N, M) d: each active specialist's dustbin probability, 0 when inactive
    outside: torch.Tensor  # (M, C) 1 where class j ∉ S_m
    total: torch.Tensor  # (N, 1) n = 1 + |A|

    @classmethod
    def build(cls, p_g, p_m, groups, active) -> "EMProblem":
        p_g = p_g.double()
        outside = torch.ones(len(groups), p_g.shape[1], dtype=torch.float64)
        base = p_g.clone()
        dustbin = torch.zeros(len(p_g), len(groups), dtype=torch.float64)
        for m, (probs, group) in enumerate(zip(p_m, groups)):
            outside[m, group] = 0
            on = active[:, m].double()
            base[:, group] += on[:, None] * probs[:, :-1].double()
            dustbin[:, m] = on * probs[:, -1].double()
        total = base.sum(dim=1, keepdim=True) + dustbin.sum(dim=1, keepdim=True)
        return cls(base, dustbin, outside, total)

    def rows(self, keep: torch.Tensor) -> "EMProblem":
        return EMProblem(self.base[keep], self.dustbin[keep], self.outside, self.total[keep])

    def negative_gradient(self, q: torch.Tensor) -> torch.Tensor:
        """``h_i = b_i / q_i + Σ_{m: i∉S_m} d_m / Σ_{j∉S_m} q_j`` (terms with b_i = 0 or d_m = 0 vanish)."""
        outside_mass = q @ self.outside.T
        share = torch.where(self.dustbin > 0, self.dustbin / outside_mass.clamp_min(1e-300),
                            torch.zeros_like(self.dustbin))
        return torch.where(self.base > 0, self.base / q.clamp_min(1e-300), torch.zeros_like(q)) + share @ self.outside

    def step(self, q: torch.Tensor) -> torch.Tensor:
        """One EM step, ``q_i h_i / n``."""
        return q * self.negative_gradient(q) / self.total

    def gap(self, q: torch.Tensor) -> torch.Tensor:
        """Per row, ``max_i h_i − n ≥ f(q) − f(q*)``."""
        return self.negative_gradient(q).max(dim=1).values - self.total[:, 0]

    def objective(self, q: torch.Tensor) -> torch.Tensor:
        """Per row, f(q) up to a constant."""
        terms = torch.where(self.base > 0, self.base * torch.log(q.clamp_min(1e-300)), torch.zeros_like(q)).sum(1)
        outside_mass = q @ self.outside.T
        dust = torch.where(self.dustbin > 0, self.dustbin * torch.log(outside_mass.clamp_min(1e-300)),
                           torch.zeros_like(self.dustbin)).sum(1)
        return -(terms + dust)


def squarem_step(problem: EMProblem, q: torch.Tensor) -> torch.Tensor:
    """One SQUAREM cycle (three EM steps' worth of work), never worse than two plain EM steps."""
    q1 = problem.step(q)
    q2 = problem.step(q1)
    r, v = q1 - q, q2 - 2 * q1 + q
    r_norm, v_norm = r.norm(dim=1, keepdim=True), v.norm(dim=1, keepdim=True)
    alpha = torch.where(v_norm > 0, -r_norm / v_norm.clamp_min(1e-300), torch.full_like(r_norm, -1.0))
    alpha = alpha.clamp(max=-1.0)
    jump = q - 2 * alpha * r + alpha**2 * v
    valid = (jump > 0).all(dim=1, keepdim=True) & torch.isfinite(jump).all(dim=1, keepdim=True)
    jump = torch.where(valid, jump, q2)
    jump = problem.step(jump / jump.sum(dim=1, keepdim=True))
    better = (problem.objective(jump) <= problem.objective(q2))[:, None]
    return torch.where(better, jump, q2)


def solve_em(p_g, p_m, groups, active, max_iter: int = 10_000, tolerance: float = 1e-9,
             accelerate: bool = True) -> tuple[torch.Tensor, int]:
    """q* for every row (all rows given have an active specialist). ``max_iter`` counts EM steps, ``tolerance``
    bounds Eq. 5's suboptimality in nats. Returns q (in ``p_g``'s dtype) and the EM steps taken."""
    problem = EMProblem.build(p_g, p_m, groups, active)
    q = p_g.double().clamp_min(1e-300)
    q = q / q.sum(dim=1, keepdim=True)
    todo = torch.arange(len(q))
    steps = 0
    while len(todo) and steps < max_iter:
        sub = problem.rows(todo)
        done = sub.gap(q[todo]) <= tolerance
        todo = todo[~done]
        if not len(todo):
            break
        sub = problem.rows(todo)
        q[todo] = squarem_step(sub, q[todo]) if accelerate else sub.step(q[todo])
        steps += 3 if accelerate else 1
    return q.to(p_g.dtype), steps
