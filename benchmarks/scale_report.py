"""The BENCHMARKS.md section on many classes and overlapping specialists, from ``eq5_solver.py`` and
``many_classes.py`` records only."""

from __future__ import annotations

import json
import statistics
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


def _gap_points(seed: dict, student: str = "topk") -> float:
    """How far the top-K (or ``topk_tail``) student's test accuracy is below the dense one's, in points."""
    return 100 * (seed["student_dense_test_accuracy"] - seed[f"student_{student}_test_accuracy"])


def _tail_cells(seed: dict) -> str:
    """The sampled-rest student's accuracy and gap, or dashes for a record without it."""
    accuracy = seed.get("student_topk_tail_test_accuracy")
    if accuracy is None:
        return "– | –"
    return f"{accuracy:.4f} | {_gap_points(seed, 'topk_tail'):+.2f}"


def _tail_bytes(r: dict) -> str:
    size = r["seeds"][0].get("topk_tail_cache_bytes")
    return f", top-K plus S = {r['rest_samples']} sampled rest classes {size / 1e6:.2f} MB" if size else ""


def many_classes_table() -> str:
    r = _load("many_classes")
    if r is None:
        return "`python benchmarks/many_classes.py` has not been run yet."
    head = (f"{r['classes']:,} classes in {r['hidden_groups']} hidden groups, class spread {r['spread']} in a group, "
            f"T = {r['temperature']}; generalist (and specialists) one hidden layer of {r['generalist_hidden']}, "
            f"members 256; specialists trained {r['specialist_epochs']} epochs; {r['test_examples']:,} test examples. "
            f"Teacher cache: dense (probs + logits) {r['dense_cache_bytes'] / 1e6:.1f} MB, top-K (K = {r['top_k']}) "
            f"{r['seeds'][0]['topk_cache_bytes'] / 1e6:.2f} MB on disk" + _tail_bytes(r) + ".")
    lines = [head, "", "| seed | specialists | groups recovered (ARI) | generalist errors | with specialists (Eq. 5) "
             "| ensemble acc. | baseline acc. | student, dense targets | student, top-K | dense − top-K (points) "
             "| student, top-K + sampled rest | dense − that (points) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["seeds"]:
        ari = f"{s['adjusted_rand_index']:.3f}" if "specialists" in s else "–"
        lines.append(f"| {s['seed']} | {s.get('specialists', '–')} | {ari} | "
                     f"{s.get('generalist_test_errors', '–')} | {s.get('specialists_test_errors', '–')} | "
                     f"{s['ensemble_test_accuracy']:.4f} | {s['baseline_test_accuracy']:.4f} | "
                     f"{s['student_dense_test_accuracy']:.4f} | {s['student_topk_test_accuracy']:.4f} | "
                     f"{_gap_points(s):+.2f} | {_tail_cells(s)} |")
    m = r["summary"]

    def pm(key, digits=4):
        return f"{m[key]['mean']:.{digits}f} ± {m[key]['std']:.{digits}f}"
    if m["adjusted_rand_index"] is None:
        return "\n".join(lines)
    lines += ["", f"Over the seeds that trained specialists: ARI {pm('adjusted_rand_index', 3)}; they remove "
              f"{pm('specialists_fewer_errors', 1)} of the generalist's test errors. Over all seeds: students "
              f"{pm('student_dense_test_accuracy')} "
              f"(dense) vs {pm('student_topk_test_accuracy')} (top-K), a gap of "
              f"{pm('dense_minus_topk_points', 2)} points (goal: within 0.5)." + _tail_summary(m)]
    return "\n".join(lines)


def _tail_summary(m: dict) -> str:
    if not m.get("dense_minus_topk_tail_points"):
        return ""
    gap, acc = m["dense_minus_topk_tail_points"], m["student_topk_tail_test_accuracy"]
    return (f" With the sampled rest (`student.cache.rest_samples`), the same K: {acc['mean']:.4f} ± {acc['std']:.4f}, "
            f"a gap of {gap['mean']:.2f} ± {gap['std']:.2f} points.")


def _paired(main: dict, key: str, control: dict, control_key: str) -> list[float]:
    """Points by which ``main``'s ``key`` exceeds ``control``'s ``control_key``, seed by seed (seeds in both)."""
    by_seed = {s["seed"]: s for s in control["seeds"]}
    return [100 * (s[key] - by_seed[s["seed"]][control_key]) for s in main["seeds"] if s["seed"] in by_seed]


def topk_control() -> str:
    """The same comparison with K = 999 of 1,000 classes: a loss equal to the dense one, read from disk."""
    main, control = _load("many_classes"), _load("many_classes_k999")
    if main is None or control is None:
        return ""
    paired = _paired(main, "student_topk_test_accuracy", control, "student_topk_test_accuracy")
    return (f"Control (`--top-k 999`): the cache keeps 999 of the 1,000 classes, so the soft term equals the dense KL, "
            f"and the student still reads its targets from disk. Its gaps to the dense student are "
            f"{', '.join(f'{_gap_points(s):+.2f}' for s in control['seeds'])} points (mean "
            f"{control['summary']['dense_minus_topk_points']['mean']:+.2f}): two students "
            f"trained on the same loss end this far apart once float rounding makes their trajectories diverge. "
            f"Paired by seed, K = 20 costs {-statistics.mean(paired):.2f} ± {statistics.stdev(paired):.2f} points "
            f"against K = 999: that part is the approximation.")


def equal_bytes_control() -> str:
    """Pure top-K with K chosen so its cache is as large as top-K plus the sampled rest."""
    main, control = _load("many_classes"), _load("many_classes_k31")
    if main is None or control is None or not main["summary"].get("dense_minus_topk_tail_points"):
        return ""
    gap = control["summary"]["dense_minus_topk_points"]
    paired = _paired(main, "student_topk_tail_test_accuracy", control, "student_topk_test_accuracy")
    return (f"Equal bytes (`--top-k {control['top_k']} --rest-samples 0`): a one-bin cache of "
            f"{control['seeds'][0]['topk_cache_bytes'] / 1e6:.2f} MB, as large as K = {main['top_k']} plus "
            f"S = {main['rest_samples']} draws, leaves its students {gap['mean']:.2f} ± {gap['std']:.2f} points "
            f"below the dense ones over seeds {', '.join(str(r['seed']) for r in control['seeds'])}; paired by seed, "
            f"the sampled rest's students are {statistics.mean(paired):+.2f} ± {statistics.stdev(paired):.2f} points "
            f"above them.")


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
    wall = sum(sum(s["seconds"].values()) for s in r["seeds"]) if r else 0.0
    text = f"""## 9. Many classes and overlapping specialists (issue 14)

### Eq. 5 with overlapping, disagreeing specialists (`python benchmarks/eq5_solver.py`)

{eq5_table()}

### MNIST as an ImageFolder of PNG files, streamed (`python benchmarks/data_scale.py`)

{data_scale_table()}

### 1,000 classes in 50 hidden groups (`python benchmarks/many_classes.py`)

{many_classes_table()}

{topk_control()}

{equal_bytes_control()}
"""
    return text, wall


if __name__ == "__main__":
    print(scale_section()[0])
