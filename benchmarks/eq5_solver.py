"""Eq. 5 with overlapping, disagreeing specialists: the old stopping rule against SQUAREM stopped on the gap.

2,000 synthetic rows, 12 classes, three overlapping groups of 8, top-3 activation (about 2.8 active specialists a
row), sharp generalist and specialists. The reference is plain EM in float64 run until the Frank-Wolfe gap (a bound
on Eq. 5's distance to its minimum) is below 1e-11 or 300,000 steps. Each solver's answer is compared with it.

    python benchmarks/eq5_solver.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from specialists.combine import active_specialists, combine
from specialists.eq5_em import EMProblem, solve_em

OUT = Path(__file__).resolve().parent / "results" / "eq5_solver.json"


def problem(seed: int, rows: int = 2000, classes: int = 12):
    torch.manual_seed(seed)
    third = classes // 3
    groups = [torch.arange(0, 2 * third), torch.arange(third, 3 * third),
              torch.cat([torch.arange(2 * third, classes), torch.arange(0, third)])]
    p_g = torch.softmax(torch.randn(rows, classes) * 4, 1)
    p_m = [torch.softmax(torch.randn(rows, len(g) + 1) * 8, 1) for g in groups]
    return p_g, p_m, groups, active_specialists(p_g, groups, top_n=3)


def old_em(p_g, p_m, groups, active, max_iter: int = 100, tolerance: float = 1e-6):
    """The solver before: plain EM, stopped after 100 steps or when q moved less than 1e-6."""
    em = EMProblem.build(p_g, p_m, groups, active)
    q = p_g.double()
    for step in range(1, max_iter + 1):
        new = em.step(q)
        moved = float((new - q).abs().max())
        q = new
        if moved < tolerance:
            break
    return q, step


def main() -> None:
    p_g, p_m, groups, active = problem(0)
    em = EMProblem.build(p_g, p_m, groups, active)
    started = time.perf_counter()
    reference, ref_steps = solve_em(p_g.double(), [p.double() for p in p_m], groups, active, max_iter=300_000,
                                    tolerance=1e-11, accelerate=False)
    ref_seconds = time.perf_counter() - started
    rows = {}
    for name, solve in (("old: plain EM, 100 steps or q moves < 1e-6", lambda: old_em(p_g, p_m, groups, active)),
                        ("new: SQUAREM EM, gap < 1e-9 nats (default)", lambda: (
                            lambda q, info: (q, info["iterations"]))(*combine(p_g, p_m, groups, active))),
                        ("L-BFGS on the logits, 100 iterations", lambda: (
                            lambda q, info: (q, info["iterations"]))(*combine(p_g, p_m, groups, active, 100, 1e-9,
                                                                              "lbfgs")))):
        started = time.perf_counter()
        q, steps = solve()
        seconds = time.perf_counter() - started
        q = q.double()
        rows[name] = {"max_abs_error": float((q - reference).abs().max()),
                      "argmax_changed": int((q.argmax(1) != reference.argmax(1)).sum()),
                      "max_gap_nats": float(em.gap(q).max()), "steps": int(steps), "seconds": round(seconds, 3)}
    record = {"rows": len(p_g), "classes": p_g.shape[1], "mean_active": float(active.sum(1).float().mean()),
              "reference": {"steps": ref_steps, "seconds": round(ref_seconds, 1),
                            "max_gap_nats": float(em.gap(reference).max())},
              "solvers": rows, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    gap = record["reference"]["max_gap_nats"]
    print(f"reference: plain EM, {ref_steps} steps, {ref_seconds:.0f} s, gap {gap:.1e}")
    print("| solver | max abs error in q | argmax changed | max gap (nats) | steps | seconds |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['max_abs_error']:.2e} | {r['argmax_changed']} | {r['max_gap_nats']:.1e} | {r['steps']} "
              f"| {r['seconds']} |")


if __name__ == "__main__":
    main()
