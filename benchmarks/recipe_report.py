"""The BENCHMARKS.md section on the MNIST recipe: each ablation step's effect and the 3-seed result against the plain
PyTorch loop, from the records of ``recipe_ablation.py`` only."""

from __future__ import annotations

import json
import statistics

from recipe_ablation import BRANCHES, OUT, STEPS
from seeded_report import gap_share

ROWS = (("teacher_errors", "teacher 2x1200"), ("baseline_errors", "student 2x800, hard labels"),
        ("distilled_errors", "student 2x800, distilled"))


def _load(name: str) -> dict | None:
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _delta(now: dict, before: dict | None, key: str, since: str = "") -> str:
    """The change a step caused; ``since`` names the row it is measured from when rows between were not run."""
    return "" if before is None else f" ({now[key] - before[key]:+d}{' since ' + since if since else ''})"


def ablation_table() -> tuple[str, float]:
    lines = ["| step | what changes | teacher | baseline | distilled | gap recovered | wall min |",
             "|---|---|---|---|---|---|---|"]
    previous, previous_name, gap, wall = None, "", False, 0.0
    chain = [(name, what, None) for name, what, _ in STEPS] + [(name, what, base) for name, base, what, _ in BRANCHES]
    for name, what, base in chain:
        record = _load(f"{name}_seed0")
        if record is None:
            lines.append(f"| {name} | {what} | not run | | | | |")
            gap = gap or base is None
            continue
        before = _load(f"{base}_seed0") if base else previous
        since = "" if base or not gap else previous_name
        cells = [f"{record[k]}{_delta(record, before, k, since)}" for k, _ in ROWS]
        label = f"{name} (from {base})" if base else name
        gap_cell = (f"{record['gap_recovered']:.0%}" if record["baseline_errors"] > record["teacher_errors"]
                    else "n/a: the baseline beats the teacher")
        lines.append(f"| {label} | {what} | {' | '.join(cells)} | {gap_cell} | "
                     f"{record['wall_seconds'] / 60:.1f} |")
        if not base:
            previous, previous_name, gap = record, name, False
        wall += record["wall_seconds"]
    return "\n".join(lines), wall


def _references() -> list[dict]:
    return [r for r in (_load("reference" if s == 0 else f"reference_seed{s}") for s in range(3)) if r is not None]


def _mean_std(values: list) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {spread:.1f} ({', '.join(map(str, values))})"


def seeds_table(step: str = STEPS[-1][0]) -> tuple[str, list[str]]:
    """``step`` over seeds 0-2 against the plain loop's runs, row by row."""
    records = _branch_records(step)
    references = _references()
    if not records:
        return "The final recipe has not been run yet.", []
    lines = [f"| model | ours, mean ± std of {len(records)} seed(s) | plain loop here, {len(references)} seed(s) | "
             "plain loop (issue, 1 run) |", "|---|---|---|---|"]
    quoted = {"teacher_errors": 108, "baseline_errors": 150, "distilled_errors": 122}
    verdicts = []
    for key, label in ROWS:
        ours = [r[key] for r in records]
        theirs = [r[key] for r in references]
        lines.append(f"| {label} | {_mean_std(ours)} | {_mean_std(theirs) if theirs else '-'} | {quoted[key]} |")
        if theirs:
            mean, ref = statistics.mean(ours), statistics.mean(theirs)
            verdicts.append(f"{label}: {'as good or better' if mean <= ref else 'worse'} ({mean:.1f} vs {ref:.1f})")
    gaps = [r["gap_recovered"] for r in records]
    ref_gaps = [r["gap_recovered"] for r in references]
    pooled = gap_share(*(statistics.mean(r[k] for r in records) for k in ("teacher_errors", "baseline_errors",
                                                                           "distilled_errors")))
    ours = (f"{statistics.mean(gaps):.0%} ({', '.join(f'{g:.0%}' for g in gaps)}; of the means: {pooled:.0%})"
            if all(r["baseline_errors"] > r["teacher_errors"] for r in records)
            else "n/a: a baseline beats its teacher")
    lines.append(f"| share of the gap recovered | {ours} | {statistics.mean(ref_gaps):.0%} "
                 f"({', '.join(f'{g:.0%}' for g in ref_gaps)}) | 67% |" if ref_gaps else "")
    return "\n".join(lines), verdicts


# Branches run over several seeds, and how the report introduces each.
BRANCH_INTROS = {
    "label_smoothing": "The same with the students' hard labels smoothed by 0.1 (`student.train.label_smoothing=0.1`; "
                       "the teacher's settings are unchanged, but it was trained again, and scores differently)",
    "student_jitter": "The same with the students' inputs jittered by up to 2 pixels, as the teacher's are "
                      "(`student.jitter=2`; the teacher gives its soft targets online, on the jittered images)",
}


def _branch_records(branch: str) -> list[dict]:
    return [r for r in (_load(f"{branch}_seed{s}") for s in range(3)) if r is not None]


def jitter_note() -> str:
    """What the student_jitter table means, each clause only where every seed's record says so."""
    records = _branch_records("student_jitter")
    text = "This recipe is `configs/mnist_recipe.yaml`."
    if all(r["baseline_errors"] < min(r["teacher_errors"], r["distilled_errors"]) for r in records):
        text += (" On every seed its jittered hard-label student beats both its own teacher and the student distilled "
                 "at alpha = 0.9, which follows that teacher: with these inputs distillation does not help, and the "
                 "paper's comparison (an unregularised baseline) stays with `configs/mnist_hinton.yaml`.")
    return f"{text} {jittered_student_share(records)}"


def jittered_student_share(records: list[dict]) -> str:
    """The jittered distilled student against the unjittered baseline of the same seed: not the paper's protocol
    (its student was regularised "solely" by the soft targets), but it shows where the distilled student's errors go.
    The baseline comes from the all_data run of that seed (hard labels, so its teacher does not matter); the teacher
    is the one the jittered student learned from."""
    pairs = [(j, _load(f"all_data_seed{j['seed']}")) for j in records]
    pairs = [(j, plain) for j, plain in pairs if plain and plain["baseline_errors"] > j["teacher_errors"]]
    if len(pairs) < 2:
        return ""
    shares = [gap_share(j["teacher_errors"], p["baseline_errors"], j["distilled_errors"]) for j, p in pairs]
    above = [j["distilled_errors"] - j["teacher_errors"] for j, _ in pairs]
    plain_above = [p["distilled_errors"] - p["teacher_errors"] for _, p in pairs]
    return (f"With jittered inputs the distilled student ends {statistics.mean(above):.1f} errors above its teacher "
            f"(each seed: {', '.join(f'{a:+d}' for a in above)}; the paper's: +7), against "
            f"{statistics.mean(plain_above):.1f} without ({', '.join(f'{a:+d}' for a in plain_above)}). Measured "
            f"against the unjittered baseline of the same seed (the `all_data` rows), that is "
            f"{statistics.mean(shares):.0%} of the gap ({', '.join(f'{x:.0%}' for x in shares)}). The two students "
            "then differ in more than the soft targets, so this is not the paper's measure and not the headline.")


BRANCH_NOTES = {"student_jitter": jitter_note}


def branch_seeds_text(branch: str) -> str:
    """A branch over seeds 0-2 against the plain loop, when more than seed 0 of it has run."""
    if _load(f"{branch}_seed1") is None:
        return ""
    table, verdicts = seeds_table(branch)
    note = BRANCH_NOTES.get(branch)
    return f"{BRANCH_INTROS[branch]}:\n\n{table}\n\n{'; '.join(verdicts)}. {note() if note else ''}"


def bisect_table() -> str:
    path = OUT / "baseline_bisect.json"
    if not path.is_file():
        return "`benchmarks/baseline_bisect.py` has not been run yet."
    record = json.loads(path.read_text())
    what = {"bare": "a plain PyTorch loop (written for this check) on all 60,000",
            "trainer": "the project's Trainer on the same 60,000 tensors, in process",
            "trainer_split": "the Trainer on the pipeline's split (59,400 of the 60,000)",
            "dropout_layers": "the bare loop on the plain loop's layer list (a Dropout(0.0) after input and hidden "
                              "layers)",
            "trainer_wd5e-4": "the Trainer with SGD weight decay 5e-4 (the option the issue asks to measure)",
            "bare_ls0.1": "the bare loop with label smoothing 0.1 (the other option the issue asks to measure)"}
    lines = ["| variant | what trains | test errors per seed | mean ± std |", "|---|---|---|---|"]
    for name, row in record["variants"].items():
        lines.append(f"| {name} | {what.get(name, name)} | {', '.join(map(str, row['errors']))} | "
                     f"{row['mean']:.1f} ± {row['std']:.1f} |")
    return "\n".join(lines)


def _curve(records: list[dict], epochs_key: str, who: str) -> str:
    lines = [f"| {who} epochs | teacher | baseline | distilled | share of the gap | wall min |",
             "|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: r[epochs_key]):
        lines.append(f"| {r[epochs_key]} | {r['teacher_errors']} | {r['baseline_errors']} | "
                     f"{r['distilled_errors']} | {r['gap_recovered']:.0%} | {r['wall_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def curve_table() -> str:
    records = [json.loads(f.read_text()) for f in OUT.glob("curve_student*_seed0.json")]
    return _curve(records, "student_epochs", "student") if records else \
        "`benchmarks/gap_curve.py` has not been run yet."


def teacher_curve_table() -> str:
    """The share of the gap against the teacher's epochs (students: 20 epochs); the 30-epoch teacher's point is the
    student curve's 20-epoch one."""
    records = [json.loads(f.read_text()) for f in OUT.glob("curve_teacher*_seed0.json")]
    first = _load("curve_student20_seed0")
    if not records or first is None:
        return "`benchmarks/gap_curve.py --teacher-epochs ...` has not been run yet."
    records = records + [{**first, "teacher_epochs": 30}]
    return _curve(records, "teacher_epochs", "teacher") + "\n\n" + _extrapolation(records)


def _extrapolation(records: list[dict]) -> str:
    """A least-squares line of the distilled student's errors on the teacher's, and the share of the gap it implies
    for better teachers (the baseline does not depend on the teacher)."""
    teacher = [r["teacher_errors"] for r in records]
    distilled = [r["distilled_errors"] for r in records]
    baseline = statistics.mean(r["baseline_errors"] for r in records)
    slope, intercept = statistics.linear_regression(teacher, distilled)

    def share(t: float) -> float:
        return (baseline - (intercept + slope * t)) / (baseline - t)
    verdict = ("so more epochs, of the teacher or of the student (above), do not reach 80% with this recipe"
               if share(0) < 0.8 else "so a better teacher alone would reach 80%")
    return (f"The distilled student's errors fall by {slope:.2f} per error the teacher loses (least squares over these "
            f"{len(records)} points). If that held, the paper's teacher (67 errors) would give {share(67):.0%} of the "
            f"gap and a teacher with no errors at all {share(0):.0%}: {verdict}.")


def checks_line() -> str:
    """What the other checks of the baseline found (``baseline_checks.json``)."""
    record = _load("baseline_checks")
    if record is None:
        return ""
    plain = record["plain_loop_teacher_1_epoch"]
    short = ", ".join(f"{r['baseline_errors']} (seed {r['seed']})" for r in plain)
    bare2 = ", ".join(str(r["baseline_errors"]) for r in record["bare_loop_2_threads"])
    long_teacher = [_load(n)["baseline_errors"] for n in ("reference", "reference_seed1", "reference_seed2")]
    text = (f"The Trainer, the pipeline's split and 1 against 2 threads (the bare loop at 2 threads: {bare2}) change "
            f"nothing. After a 1-epoch teacher the plain loop's baseline scores {short}; after its 30-epoch teacher "
            f"{min(long_teacher)}-{max(long_teacher)}. The plain loop's layer list (identity dropouts) changes nothing "
            f"either, and weight decay 5e-4 moves the mean by less than one standard deviation, so it stays off.")
    more = record.get("bare_loop_more_seeds", [])
    if not more:
        return text + " The remaining gap is not explained; the bisection rules the project's training loop out."
    bisect = _load("baseline_bisect")
    bare_all = bisect["variants"]["bare"]["errors"] + [r["baseline_errors"] for r in more]
    plain_all = long_teacher + [r["baseline_errors"] for r in plain]
    seeds = sorted({*bisect["seeds"], *(r["seed"] for r in more)})
    listed = ", ".join(f"{r['baseline_errors']} (seed {r['seed']})" for r in more)
    return text + (
        f" {len(more)} more seeds of the bare loop ({listed}) show how much one seed moves it: over seeds "
        f"{seeds[0]}-{seeds[-1]} the bare loop gives "
        f"{statistics.mean(bare_all):.1f} ± {statistics.stdev(bare_all):.1f} and the plain loop "
        f"{statistics.mean(plain_all):.1f} ± {statistics.stdev(plain_all):.1f} (its {len(plain_all)} runs above), a "
        f"difference of about one standard deviation of the bare loop. Three seeds cannot resolve a gap of this size; "
        f"the baseline row of the acceptance needs more seeds than the issue's three to be decided either way."
    ) + _smoothing_line(bisect)


def _smoothing_line(bisect: dict) -> str:
    """Label smoothing's effect on the bare loop, seed by seed, from the bisection record."""
    smoothed, bare = bisect["variants"].get("bare_ls0.1"), bisect["variants"]["bare"]
    if smoothed is None:
        return ""
    change = [a - b for a, b in zip(smoothed["errors"], bare["errors"])]
    return (f" Label smoothing 0.1 is another matter: the bare loop with it scores {smoothed['mean']:.1f} ± "
            f"{smoothed['std']:.1f}, {-statistics.mean(change):.0f} errors fewer than without it on the same seeds "
            f"(each seed: {', '.join(f'{c:+d}' for c in change)}), better than the distilled student. The paper's "
            f"baseline is the student 'with no regularization', so the headline keeps it unsmoothed; "
            f"`train.label_smoothing` offers it to users (off by default).")


def _bisect_epochs() -> str:
    path = OUT / "baseline_bisect.json"
    return str(json.loads(path.read_text())["epochs"]) if path.is_file() else "20"


def recipe_section() -> tuple[str, float]:
    ablation, wall = ablation_table()
    seeds, verdicts = seeds_table()
    reference = _load("reference")
    ref_line = (f"The plain loop (`{reference['command']}`) took {reference['wall_seconds'] / 60:.1f} min here."
                if reference else "The plain loop has not been run here yet.")
    text = f"""## 1b. Where the headline's errors go: the recipe, one change at a time

Each row is `distill run configs/mnist_hinton.yaml` with the changes of every row above it plus its own, at the
plain PyTorch loop's budget (30 teacher epochs, 20 student epochs, T = 20, alpha = 0.9, seed 0); in brackets, the
change in test errors that the row's step caused. `python benchmarks/recipe_ablation.py` runs them, recording
`benchmarks/results/recipe/<step>_seed<seed>.json`.

{ablation}

The last step (the plain loop's recipe, all of it, inside the pipeline) with three seeds (the seed sets the
validation split, the initial weights and the batch order); `configs/mnist_hinton.yaml` keeps the recipe of the first
row until a step measurably beats it:

{seeds}

{ref_line} {'; '.join(verdicts) + '.' if verdicts else ''}

{branch_seeds_text('label_smoothing')}

{branch_seeds_text('student_jitter')}

The hard-label baseline alone, three ways, at the plain loop's recipe (one-cycle to lr 0.05, SGD momentum 0.9,
batch 100, {_bisect_epochs()} epochs, last epoch kept, one thread), seeds 0-2 (`python benchmarks/baseline_bisect.py`):

{bisect_table()}

{checks_line()}

The share of the gap against the student's epochs, one teacher (30 epochs), the plain loop's recipe, seed 0
(`python benchmarks/gap_curve.py`):

{curve_table()}

The same against the teacher's epochs (students 20 epochs; `python benchmarks/gap_curve.py --teacher-epochs 60 120`):

{teacher_curve_table()}
"""
    return text, wall


if __name__ == "__main__":
    print(recipe_section()[0])
