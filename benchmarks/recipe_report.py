"""The BENCHMARKS.md section on the MNIST recipe: each ablation step's effect and the 3-seed result against the plain
PyTorch loop, from the records of ``recipe_ablation.py`` only."""

from __future__ import annotations

import json
import statistics

from recipe_ablation import BRANCHES, OUT, STEPS

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
        lines.append(f"| {label} | {what} | {' | '.join(cells)} | {record['gap_recovered']:.0%} | "
                     f"{record['wall_seconds'] / 60:.1f} |")
        if not base:
            previous, previous_name, gap = record, name, False
        wall += record["wall_seconds"]
    return "\n".join(lines), wall


def seeds_table() -> tuple[str, list[str]]:
    final = STEPS[-1][0]
    records = [r for r in (_load(f"{final}_seed{s}") for s in range(3)) if r is not None]
    reference = _load("reference")
    if not records:
        return "The final recipe has not been run yet.", []
    lines = [f"| model | ours, mean ± std of {len(records)} seed(s) | plain loop (this machine) | plain loop (issue) |",
             "|---|---|---|---|"]
    quoted = {"teacher_errors": 108, "baseline_errors": 150, "distilled_errors": 122}
    verdicts = []
    for key, label in ROWS:
        values = [r[key] for r in records]
        mean = statistics.mean(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        ref = reference[key] if reference else None
        lines.append(f"| {label} | {mean:.1f} ± {spread:.1f} ({', '.join(map(str, values))}) | "
                     f"{ref if ref is not None else '-'} | {quoted[key]} |")
        if ref is not None:
            verdicts.append(f"{label}: {'as good or better' if mean <= ref else 'worse'} ({mean:.1f} vs {ref})")
    gaps = [r["gap_recovered"] for r in records]
    lines.append(f"| share of the gap recovered | {statistics.mean(gaps):.0%} "
                 f"({', '.join(f'{g:.0%}' for g in gaps)}) | "
                 f"{reference['gap_recovered']:.0%} | 67% |" if reference else "")
    return "\n".join(lines), verdicts


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
"""
    return text, wall


if __name__ == "__main__":
    print(recipe_section()[0])
