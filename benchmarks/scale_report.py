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
    rows = [("classes / hidden groups / class spread in a group / T",
             f"{r['classes']:,} / {r['hidden_groups']} / {r.get('spread', 1.0)} / {r.get('temperature', 4)}"),
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


def data_scale_table() -> str:
    r = _load("data_scale")
    if r is None:
        return "`python benchmarks/data_scale.py` has not been run yet."
    acc, mem, thr = r["accuracy"], r["memory"], r["throughput"]
    rows = [("`distill run`, teacher test accuracy: in memory vs streamed PNGs",
             f"{acc['in_memory']['teacher_test_accuracy']:.4f} vs {acc['streamed']['teacher_test_accuracy']:.4f}"),
            ("`distill run`, student test accuracy: in memory vs streamed PNGs",
             f"{acc['in_memory']['student_test_accuracy']:.4f} vs {acc['streamed']['student_test_accuracy']:.4f}"),
            (f"peak RSS, driver: S = {mem['1S']['train_examples']:,} vs 4S = {mem['4S']['train_examples']:,} images",
             f"{mem['1S']['driver_peak_rss_mb']:.0f} MB vs {mem['4S']['driver_peak_rss_mb']:.0f} MB "
             f"({r['peak_ratio_4S_over_S']['driver']:.2f}x; goal <= 1.2x)"),
            ("peak RSS, actor (with its DataLoader worker): S vs 4S",
             f"{mem['1S']['actor_peak_rss_mb']:.0f} MB vs {mem['4S']['actor_peak_rss_mb']:.0f} MB "
             f"({r['peak_ratio_4S_over_S']['actor']:.2f}x; goal <= 1.2x)"),
            ("training images/s, one member: in memory vs streamed PNGs (1 worker)",
             f"{thr['in_memory']['samples_per_second']:.0f} vs {thr['streamed']['samples_per_second']:.0f} "
             f"({r['streamed_over_in_memory_throughput']:.2f}x; goal >= 0.7x)")]
    if "decoded" in thr:
        rows.append(("training images/s, one member: in memory vs PNGs decoded once (`data.decoded_cache`)",
                     f"{thr['in_memory']['samples_per_second']:.0f} vs {thr['decoded']['samples_per_second']:.0f} "
                     f"({r['decoded_over_in_memory_throughput']:.2f}x; goal >= 0.7x); the one-time decode of "
                     f"{thr['decoded']['image_files']:,} PNGs took "
                     f"{thr['decoded']['load_seconds']:.0f} s"))
    return "\n".join(["| measure | value |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]])


def scale_section() -> tuple[str, float]:
    r = _load("many_classes")
    wall = sum(r["seconds"].values()) if r else 0.0
    text = f"""## 9. Many classes and overlapping specialists (issue 14)

### Eq. 5 with overlapping, disagreeing specialists (`python benchmarks/eq5_solver.py`)

{eq5_table()}

### MNIST as an ImageFolder of PNG files, streamed (`python benchmarks/data_scale.py`)

{data_scale_table()}

### 1,000 classes in 50 hidden groups (`python benchmarks/many_classes.py`)

{many_classes_table()}
"""
    return text, wall


if __name__ == "__main__":
    print(scale_section()[0])
