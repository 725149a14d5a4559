"""Write ``BENCHMARKS.md`` and its plots from the JSON records; no figure in it is typed by hand.

    python benchmarks/paper_report.py

Inputs: ``benchmarks/results/paper/*.json`` (written by ``paper_experiments.py``, one ``results.json`` per
experiment) and the performance records ``benchmarks/results/*.json``. Outputs: ``BENCHMARKS.md`` and the PNGs
under ``benchmarks/results/paper/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from paper_experiments import OUT  # noqa: E402
from recipe_report import recipe_section  # noqa: E402
from scale_report import scale_section  # noqa: E402
from seeded_report import (  # noqa: E402
    gap_share, headline_errors, headline_seeds_text, headline_share, save_plot, table, temperature_grid,
)

REPO = Path(__file__).resolve().parents[1]
PERF = REPO / "benchmarks" / "results"
TEST_SIZE = 10_000

HEADER = """# Benchmarks

Every figure below is read from a JSON record written by a run: the paper's experiments from
`benchmarks/results/paper/<experiment>.json` (each is the `results.json` of one `distill run`, plus the command and
its wall-clock time), the performance benchmarks from `benchmarks/results/<benchmark>.json`. This file is generated:

```bash
python benchmarks/paper_experiments.py   # runs every experiment not yet recorded (about {total_minutes:.0f} min here)
python benchmarks/paper_report.py        # writes this file and the plots
```

Machine: {machine}. All experiments share `--output-dir runs/paper`, so a model that two experiments need (the
2x1200 teacher, a hard-label baseline, ensemble member 0) is trained once; an experiment's wall time therefore only
counts what it trained itself. Seed 0 unless a table gives several (ensemble member i uses seed + i). Wall times
were measured while the same two cores also ran the test suite or other experiments for part of the time, so they
are upper bounds.
"""


def load(name: str) -> dict | None:
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def provenance(record: dict) -> str:
    text = f"Command: `{record['command']}` ({record['wall_seconds'] / 60:.1f} min wall clock, {record['when']})."
    training = record.get("training_run")
    if training:
        text += f" The models were trained by an earlier run of it ({training['wall_seconds'] / 60:.1f} min); this " \
                "one reused them all."
    return text


def epochs(record: dict) -> str:
    cfg = record
    members = cfg["ensemble"]["members"]
    student = cfg["student"]
    return (f"{members[0]['epochs_trained']} teacher epochs, {student['epochs_trained']} student epochs; "
            "the weights kept are those of the best validation epoch")


QUALITY = ["test NLL", "test ECE", "agreement with teacher"]
QUALITY_NOTE = ("NLL in nats per example; ECE over 15 equal-width confidence bins; agreement: the share of test images "
                "on which a student's top class is its teacher's. All three computed by the runs themselves "
                "(`results.json`); '-' where a record predates them.")


def quality(section: dict, prefix: str = "", suffix: str = "") -> list[str]:
    """NLL, ECE and agreement cells from a results.json section (``<prefix>test_nll<suffix>``, ...)."""
    def cell(key: str) -> str:
        value = section.get(key)
        return "-" if value is None else f"{value:.4f}"

    return [cell(f"{prefix}test_nll{suffix}"), cell(f"{prefix}test_ece{suffix}"), cell(f"{prefix}agreement")]


def headline() -> tuple[str, float]:
    r = load("headline")
    if r is None:
        return "## 1. MNIST headline\n\nNot run yet.\n", 0.0
    teacher, baseline, distilled = headline_errors(r)
    student = r["student"]
    gap = gap_share(teacher, baseline, distilled)
    member = r["ensemble"]["members"][0]
    rows = [
        ["teacher 2x1200, dropout + max-norm + jitter 2 px", 67, teacher, *quality(member)],
        ["student 2x800, hard labels (baseline)", 146, baseline, *quality(student, "baseline_")],
        [f"student 2x800, distilled at T = {student['temperature']:g}, alpha = {student['alpha']:g}", 74, distilled,
         *quality(student)],
        ["share of the teacher-vs-baseline gap recovered", "91%", f"{100 * gap:.0f}%", "", "", ""],
    ]
    plot = plot_curves(r, OUT / "headline_curves.png")
    mean_gap, seeds = headline_share()
    over = f"the mean of {seeds} seeds" if seeds > 1 else "one seed"
    verdict = (
        "As in the paper, distillation recovers nearly all of the gap between the hard-label student and the teacher."
        if mean_gap >= 0.8 else
        "Distillation closes a large part of the gap between the hard-label student and the teacher, but less of it "
        "than in the paper." if mean_gap >= 0.4 else
        "Distillation recovers little of the gap here, far less than in the paper."
    )
    text = f"""## 1. MNIST headline (paper §3)

{table(["model", "paper test errors", "ours (seed 0)", *QUALITY], rows)}

{QUALITY_NOTE}

{provenance(r)} Budget: {epochs(r)}. {verdict} The paper trained far longer (its teacher reaches 67 errors); on this
2-core CPU the schedule is cut to fit the hour, so our absolute errors are higher (the teacher's curve is still
rising at the last epoch, and a weaker teacher gives less informative soft targets), while the comparison that must
hold, the share of the gap recovered, is {100 * mean_gap:.0f}% ({over}) against the paper's 91%.

{headline_seeds_text()}
{formats_line(student)}

![test accuracy per epoch]({plot.relative_to(REPO)})
"""
    return text, r["wall_seconds"]


def formats_line(student: dict) -> str:
    """The shipped files of the distilled student, with their size and CPU latency as the run measured them."""
    files = student.get("formats") or {}
    if not files:
        return ""
    cells = [f"{name} {f['bytes'] / 1e6:.1f} MB, {f['latency_ms_per_batch']:.2f} ms" for name, f in files.items()]
    return (f"The distilled student as shipped (each file checked against the eager model within 1e-4), CPU latency "
            f"per batch of {student['latency_batch_size']}: {'; '.join(cells)}; the eager model "
            f"{student['latency_ms_per_batch']:.2f} ms.")


def plot_curves(r: dict, path: Path) -> Path:
    student = r["student"]
    curves = {
        "teacher 2x1200": r["ensemble"]["members"][0]["curves"],
        "student 2x800, hard labels": student["baseline_curves"],
        f"student 2x800, distilled (T={student['temperature']:g})": student["curves"],
    }
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, curve in curves.items():
        acc = curve.get("test_accuracy", [])
        ax.plot(range(1, len(acc) + 1), [100 * a for a in acc], marker=".", label=label)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="MNIST: test accuracy per epoch")
    ax.set_ylim(97.5, 99.5)
    return save_plot(fig, ax, path)


def ensemble_teacher() -> tuple[str, float]:
    arith, geo = load("ensemble_arithmetic"), load("ensemble_geometric")
    if arith is None:
        return "## 2. Ensemble of teachers\n\nNot run yet.\n", 0.0
    ens = arith["ensemble"]
    rows = [[f"member {i} (seed {i})", m["test_errors"], *quality(m)] for i, m in enumerate(ens["members"])]
    rows += [[f"ensemble, {mean} mean", ens[f"test_errors_{mean}"], *quality(ens, suffix=f"_{mean}")]
             for mean in ("arithmetic", "geometric")]
    rows += [["student 2x800, hard labels (baseline)", arith["student"]["baseline_test_errors"],
              *quality(arith["student"], "baseline_")],
             ["student distilled from the arithmetic mean", arith["student"]["test_errors"], *quality(arith["student"])]]
    wall = arith["wall_seconds"]
    if geo is not None:
        rows.append(["student distilled from the geometric mean", geo["student"]["test_errors"],
                     *quality(geo["student"])])
        wall += geo["wall_seconds"]
    best_member = min(m["test_errors"] for m in ens["members"])
    text = f"""## 2. Ensemble of teachers (paper §4, speech: 58.9% baseline, 61.1% ensemble, 60.8% distilled)

{table(["model", "test errors", *QUALITY], rows)}

{QUALITY_NOTE}

{provenance(arith)}{' ' + provenance(geo) if geo else ''} The paper gives no MNIST figure for an ensemble; its
speech result is that one distilled model keeps over 80% of a 10-model ensemble's gain. Here the ensemble
({ens['test_errors_arithmetic']} errors, arithmetic) against its best member ({best_member}):
{"the ensemble helps" if ens['test_errors_arithmetic'] < best_member else "the ensemble does not beat its best member"} (two members, one of them clearly weaker). The student distilled
from it has {arith['student']['test_errors']} errors (arithmetic mean){f", {geo['student']['test_errors']} (geometric)" if geo else ""},
against {arith['student']['baseline_test_errors']} on hard labels{_vs_headline(arith)}.
"""
    return text, wall


def _vs_headline(record: dict) -> str:
    head = load("headline")
    if head is None:
        return ""
    return f" and {head['student']['test_errors']} when distilled from member 0 alone (experiment 1)"


def transfer_sets() -> tuple[str, float]:
    no3, only78 = load("no3"), load("only78")
    parts, wall = ["## 3. Transfer sets with classes left out (paper §3)\n"], 0.0
    if no3 is not None:
        s = no3["student"]
        rows = [
            ["errors (all 10,000)", 206, s["test_errors_before_shift"], 109, s["test_errors"]],
            [f"errors on the {s['left_out_test_examples']:,} test 3s", 133, s["left_out_test_errors_before_shift"], 14,
             s["left_out_test_errors"]],
            ["bias shift of class 3", "", "", "+3.5 (tuned on test)", f"+{s['bias_shift']:.2f} (chosen on validation)"],
            ["same student on hard labels, same transfer set (errors)", "", s["baseline_test_errors"], "", ""],
        ]
        parts.append(f"""### Without any 3s

{table(["", "paper, no shift", "ours, no shift", "paper, shifted", "ours, shifted"], rows)}

{provenance(no3)} The student never sees a 3 ({s['transfer_examples']:,} transfer images); what it knows about 3s
comes from the teacher's soft targets on the other digits, and the bias shift chosen on validation data brings
most of the 3s back.
""")
        wall += no3["wall_seconds"]
    if only78 is not None:
        s = only78["student"]
        before, after = 1 - s["test_accuracy_before_shift"], 1 - s["test_accuracy"]
        rows = [["test error", "47.3%", pct(before), "13.2%", pct(after)],
                ["bias shift of the 8 unseen classes", "", "", "7 and 8 lowered by 7.6 (test)",
                 f"+{s['bias_shift']:.2f} (validation)"],
                ["same student on hard labels, same transfer set", "", pct(1 - s["baseline_test_accuracy"]), "", ""]]
        parts.append(f"""### Only 7s and 8s

{table(["", "paper, no shift", "ours, no shift", "paper, shifted", "ours, shifted"], rows)}

{provenance(only78)} Raising the eight unseen classes by one amount is the same as lowering 7 and 8 by it.
""")
        wall += only78["wall_seconds"]
    return "\n".join(parts), wall


def regulariser() -> tuple[str, float]:
    r, full = load("3pct"), load("headline")
    if r is None:
        return "## 4. Soft targets as a regulariser\n\nNot run yet.\n", 0.0
    s = r["student"]
    rows = [["hard labels, 3% of the training set", "44.5%", pct(s["baseline_test_accuracy"])],
            ["teacher's soft targets, the same 3%", "57.0%", pct(s["test_accuracy"])]]
    if full is not None:
        rows.append(["hard labels, all the training set", "58.9%", pct(full["student"]["baseline_test_accuracy"])])
    recovered = ""
    if full is not None:
        lo, hi = s["baseline_test_accuracy"], full["student"]["baseline_test_accuracy"]
        recovered = (f" Soft targets on 3% recover {100 * (s['test_accuracy'] - lo) / (hi - lo):.0f}% of the distance "
                     "from the 3% baseline to the full-data baseline "
                     f"(paper: {100 * (57.0 - 44.5) / (58.9 - 44.5):.0f}%).") if hi != lo else ""
    text = f"""## 4. Soft targets as a regulariser (paper §6: speech frame accuracy; ours: MNIST test accuracy)

{table(["student 2x800 trained on", "paper (speech)", "ours (MNIST)"], rows)}

{provenance(r)} {s['transfer_examples']:,} transfer images, {s['epochs_trained']} epochs, weights of the best
validation epoch (the early stopping the paper needed for the hard-label model).{recovered}
"""
    return text, r["wall_seconds"]


def specialists() -> tuple[str, float]:
    r = load("specialists")
    if r is None:
        return "## 6. Specialists\n\nNot run yet.\n", 0.0
    s = r["specialists"]
    paper_table4 = {0: "0%", 1: "+3.4%", 2: "+7.4%"}
    rows = [[row["covering"], f"{row['examples']:,}", row["generalist_correct"], row["combined_correct"],
             f"{row['delta_correct']:+d}", f"{100 * row['relative_change']:+.2f}%", paper_table4.get(row["covering"], "")]
            for row in s["by_covering"]]
    groups = ", ".join("{" + ", ".join(n.split(" - ")[0] for n in names) + "}" for names in s["group_names"])
    student = r.get("student", {})
    text = f"""## 6. Specialists (paper §5; Table 4 analogue)

Groups found by K-means on the generalist's class correlation matrix: {groups}.
Generalist {s['generalist_test_errors']} test errors; generalist + specialists (Eq. 5) {s['test_errors']}
(accuracy {pct(s['generalist_test_accuracy'])} to {pct(s['test_accuracy'])}; paper, JFT: 25.0% to 26.1%).

{table(["specialists covering the correct class", "test examples", "generalist correct", "combined correct",
        "change", "relative", "paper (JFT)"], rows)}

{provenance(r)} The generalist is deliberately small (one hidden layer of 64, 3 epochs) so that it confuses
classes. As in the paper's Table 4, examples no specialist covers change little (Eq. 5 is then the generalist
alone, up to the top-n choice) and covered examples gain. Distilling the combined model into a student the
size of the generalist (the paper left this to future work): {student.get('test_errors', '-')} errors against
{student.get('baseline_test_errors', '-')} for the same student on hard labels.
"""
    return text, r["wall_seconds"]


def variants() -> tuple[str, float]:
    """Issue 7: FitNets and adversarial KD beside vanilla KD and the hard-label baseline, same student and epochs."""
    head = load("headline")
    names = {"variant_fitnets": "FitNets: 5 hint epochs, then KD", "variant_adversarial_pretrained":
             "adversarial, pre-trained then frozen discriminator", "variant_adversarial_gan":
             "adversarial, GAN-style joint training", "variant_adversarial_wgan":
             "adversarial, Wasserstein critic + gradient penalty"}
    records = {name: load(name) for name in names}
    if head is None or not any(records.values()):
        return "## 7. Distillation variants\n\nNot run yet.\n", 0.0
    s = head["student"]
    rows = [["hard labels only (baseline)", s["baseline_test_errors"]],
            [f"vanilla KD, T = {s['temperature']:g}, alpha = {s['alpha']:g}", s["test_errors"]]]
    rows += [[label, records[name]["student"]["test_errors"]] for name, label in names.items() if records[name]]
    done = [r for r in records.values() if r]
    best = min(done, key=lambda r: r["student"]["test_errors"])
    text = f"""## 7. Distillation variants (issue 7; PAPER.md "Variants named by the project's sources")

{table(["2x800 student, headline teacher, " + str(s['epochs_trained']) + " epochs", "test errors"], rows)}

Commands: `{done[0]['command']}` with `student.method` and its section set per row (see
`benchmarks/paper_experiments.py`); {sum(r['wall_seconds'] for r in done) / 60:.1f} min for the
{len(done)} runs. The adversarial variants use the labels plus an adversarial term (weight 0.1, beta 1) and no soft
targets, so they are compared with the baseline as much as with KD. Best variant here: {best['experiment']}
({best['student']['test_errors']} errors); {"vanilla KD stays best" if s['test_errors'] <= best['student']['test_errors'] else "it beats vanilla KD"}.
{_no_help(records, names, s['baseline_test_errors'])}
"""
    return text, sum(r["wall_seconds"] for r in done)


def _no_help(records: dict, names: dict, baseline: int) -> str:
    worse = [names[n] for n, r in records.items() if r and r["student"]["test_errors"] >= baseline]
    if not worse:
        return "Every variant beats the hard-label baseline."
    return (f"Not helping here (no better than the hard-label baseline's {baseline} errors): " + "; ".join(worse)
            + ". One seed each, default settings, no tuning of the adversarial weight beyond digits.")


def sweep() -> tuple[str, float]:
    r = load("sweep")
    if r is None:
        return "## 8. alpha x T sweep\n\nNot run yet.\n", 0.0
    sw = r["sweep"]
    keys = list(sw["grid"])
    t_key, a_key = keys[:2]
    ts, alphas = sw["grid"][t_key], sw["grid"][a_key]
    cell = {(row[t_key], row[a_key]): row for row in sw["trials"]}
    rows = [[f"T = {t:g}"] + [cell[(t, a)]["test_errors"] if (t, a) in cell else "-" for a in alphas] for t in ts]
    plots = []
    for path in sw["plots"]:
        source = Path(path) if Path(path).is_absolute() else REPO / path
        if source.is_file():
            target = OUT / source.name
            target.write_bytes(source.read_bytes())
            plots.append(target)
    images = "\n".join(f"![{p.stem}]({p.relative_to(REPO)})" for p in plots)
    best = sw["best"]
    text = f"""## 8. alpha x T sweep on Ray Tune (issue 7)

Test errors of a 2x300 student ({r['command'].split('student.train.epochs=')[1].split()[0]} epochs) distilled from the
headline teacher, one Ray Tune trial and one MLflow run per cell:

{table(["", *[f"alpha = {a:g}" for a in alphas]], rows)}

Command: `{r['command']}` ({r['wall_seconds'] / 60:.1f} min). Chosen on validation accuracy: T = {best[t_key]:g},
alpha = {best[a_key]:g} ({best['test_errors']} test errors).

{images}
"""
    return text, r["wall_seconds"]


def performance() -> str:
    def get(name: str) -> dict | None:
        path = PERF / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    rows = []
    if (r := get("trainer_overhead")):
        s = r["summary"]
        rows.append(["trainer overhead", "`python benchmarks/trainer_overhead.py`",
                     f"{s['ours_epoch_seconds']:.2f} s vs {s['bare_epoch_seconds']:.2f} s per epoch (2x1200, MNIST)",
                     f"{s['ratio_ours_over_bare']:.2f}x", s["goal"]])
    if (r := get("ray_scaling")):
        s = r["summary"]
        rows.append(["Ray scaling, 2 actors vs 1", "`python benchmarks/ray_scaling.py`",
                     f"{s['speedup_end_to_end']:.2f}x end to end", f"{s['speedup_training']:.2f}x", s["goal"]])
    if (r := get("distill_step")):
        s = r["summary"]
        rows.append(["distillation epoch, cached teacher", "`python benchmarks/distill_step.py`",
                     f"online teacher {s['online_over_plain']:.2f}x", f"{s['cached_over_plain']:.2f}x", s["goal"]])
        rows.append(["student vs teacher latency (batch 256)", "`python benchmarks/distill_step.py`",
                     f"{s['student_ms_per_batch_256']:.1f} ms vs {s['teacher_ms_per_batch_256']:.1f} ms",
                     f"{s['teacher_over_student_latency']:.1f}x faster", ""])
    for name, label in (("specialist_inference", "Eq. 5 inference vs generalist, 64-unit generalist"),
                        ("specialist_inference_2x1200", "Eq. 5 inference vs generalist, 2x1200 generalist")):
        if (r := get(name)):
            s = r["summary"]
            rows.append([label, "`python benchmarks/specialist_inference.py`",
                         f"{s['specialists']} specialists, solver {s['solver']}",
                         f"{s['ratio_combined_over_generalist']:.2f}x", s["goal"]])
    if (r := get("packing")):
        by = {row["pack"]: row for row in r["rows"]}
        rows.append(["8 small members (2x128 MLP): one pack vs 8 fractional actors", "`python benchmarks/packing.py`",
                     f"{by[1]['member_images_per_s']:.0f} vs {by[8]['member_images_per_s']:.0f} member-images/s "
                     f"(2 packs of 4: {by[4]['vs_separate']:.2f}x); mean accuracy {by[1]['mean_test_accuracy']:.4f} "
                     f"vs {by[8]['mean_test_accuracy']:.4f}", f"{r['summary']['pack_of_8_over_separate']:.2f}x",
                     r["summary"]["goal"]])
    if (r := get("data_parallel")):
        one, two = r["rows"]
        rows.append(["one member on 2 data-parallel workers vs 1 (MNIST, global batch 128)",
                     "`python benchmarks/data_parallel.py`",
                     f"test accuracy {one['test_accuracy']:.4f} vs {two['test_accuracy']:.4f}; wall {one['wall_s']} s "
                     f"vs {two['wall_s']} s (gloo on 2 shared cores)", f"{r['summary']['accuracy_gap_points']:.2f} "
                     "points", r["summary"]["goal"]])
    machine = next((get(n)["machine"]["platform"] for n in ("trainer_overhead",) if get(n)), "")
    return f"""## Performance benchmarks (CPU, {machine})

{table(["benchmark", "command", "detail", "measured", "goal"], rows)}

Ratios are measured within one run of each script (this shared 2-vCPU VM is noisy; reruns move them by a few
percent). Where the 64-unit generalist misses the <= 3x goal for Eq. 5 inference, it is because that model is
memory-bound: gathering each specialist's examples costs as much as its forward pass, while with the 2x1200
generalist the same code stays well inside the goal.
"""


def machine_line() -> str:
    for path in sorted(PERF.glob("*.json")):
        record = json.loads(path.read_text())
        if "machine" in record:
            m = record["machine"]
            return f"2 vCPUs (shared VM), no GPU, torch {m['torch']}, {m['torch_threads']} threads"
    return "unknown"


def main() -> None:
    sections = [headline(), recipe_section(), ensemble_teacher(), transfer_sets(), regulariser(), temperature_grid(),
                specialists(), variants(), sweep(), scale_section()]
    total = sum(wall for _, wall in sections) / 60
    body = [HEADER.format(total_minutes=total, machine=machine_line())]
    body += [text for text, _ in sections]
    body.append(performance())
    (REPO / "BENCHMARKS.md").write_text("\n".join(body))
    print(f"wrote {REPO / 'BENCHMARKS.md'}")


if __name__ == "__main__":
    main()
