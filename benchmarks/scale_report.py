"""The BENCHMARKS.md section on many classes and overlapping specialists, from ``eq5_solver.py`` and
``many_classes.py`` records only."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def eq5_table() -> str:
    r = _load("eq5_solver")
    if r is None:
        return "`python benchmarks/eq5_solver.py` has not been run yet."
    ref = r["reference"]
    lines = [f"{r['rows']:,} rows, {r['classes']} classes, three overlapping groups, {r['mean_active']:.2f} active "
             f"specialists a row on average; reference: plain EM in float64 for {ref['steps']:,} steps "
             f"({ref['seconds']:.0f} s), gap {ref['max_gap_nats']:.0e} nats.", "",
             "| solver | max abs error in q | argmax changed | max gap (nats) | EM steps | seconds |",
             "|---|---|---|---|---|---|"]
    for name, s in r["solvers"].items():
        lines.append(f"| {name} | {s['max_abs_error']:.1e} | {s['argmax_changed']} | {s['max_gap_nats']:.0e} | "
                     f"{s['steps']} | {s['seconds']} |")
    return "\n".join(lines)


def many_classes_table() -> str:
    r = _load("many_classes")
    if r is None:
        return "`python benchmarks/many_classes.py` has not been run yet."
    rows = [("classes / hidden groups", f"{r['classes']:,} / {r['hidden_groups']}"),
            ("specialists trained", r["specialists"]),
            ("groups recovered (adjusted Rand index)", f"{r['adjusted_rand_index']:.3f}"),
            ("test errors: generalist -> generalist + specialists",
             f"{r['generalist_test_errors']} -> {r['specialists_test_errors']} of {r['test_examples']:,}"),
            ("teacher cache: dense (probs + logits) vs top-K on disk",
             f"{r['dense_cache_bytes'] / 1e6:.1f} MB vs {r['topk_cache_bytes'] / 1e6:.2f} MB (K = {r['top_k']})"),
            ("student test accuracy: dense targets vs top-K",
             f"{r['student_dense_test_accuracy']:.4f} vs {r['student_topk_test_accuracy']:.4f}"),
            ("ensemble / hard-label baseline test accuracy",
             f"{r['ensemble_test_accuracy']:.4f} / {r['baseline_test_accuracy']:.4f}"),
            ("wall time (dense run, top-K run)", f"{r['seconds']['dense_run']} s, {r['seconds']['topk_run']} s")]
    return "\n".join(["| measure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]])


def scale_section() -> tuple[str, float]:
    r = _load("many_classes")
    wall = sum(r["seconds"].values()) if r else 0.0
    text = f"""## 9. Many classes and overlapping specialists (issue 14)

### Eq. 5 with overlapping, disagreeing specialists (`python benchmarks/eq5_solver.py`)

{eq5_table()}

### 1,000 classes in 50 hidden groups (`python benchmarks/many_classes.py`)

{many_classes_table()}
"""
    return text, wall


if __name__ == "__main__":
    print(scale_section()[0])
