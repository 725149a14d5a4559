"""Where the headline's errors go: the MNIST recipe changed one step at a time, against the plain PyTorch loop.

Each step is ``distill run configs/mnist_hinton.yaml`` with the overrides of every step before it plus its own, at
the plain loop's epochs (30 teacher, 20 student), so each row's change in test errors is that step's effect. The
last step (the plain loop's recipe) is also run with seeds 1 and 2. All runs share one
output folder, so a teacher that a step does not change is trained once and reused.

    python benchmarks/recipe_ablation.py                    # every step, skipping those already recorded
    python benchmarks/recipe_ablation.py --reference        # also the plain loop (../shared/reference)
    python benchmarks/paper_report.py                       # BENCHMARKS.md from the records
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "recipe"
RUNS = "runs/recipe"
REFERENCE = REPO.parent / "shared" / "reference" / "mnist_kd_loop.py"
DATA = REPO.parent / "shared" / "data"
SEEDS = (0, 1, 2)

# The recipe before this issue, at the plain loop's epochs: the starting point every step changes.
BEFORE = ["ensemble.train.scheduler.name=cosine", "student.train.scheduler.name=cosine",
          "ensemble.train.batch_size=128", "student.train.batch_size=128", "ensemble.train.optimizer.lr=0.05",
          "ensemble.train.select=best", "student.train.select=best", "data.val_size=0.1",
          "ensemble.train.epochs=30", "student.train.epochs=20"]

# (name, what changes, overrides added to every earlier step's)
STEPS = [
    ("before", "the recipe before this issue (cosine, batch 128, teacher lr 0.05, best epoch on a 10% hold-out)",
     BEFORE),
    ("onecycle", "one-cycle schedule, stepped every batch", [
        "ensemble.train.scheduler.name=onecycle", "student.train.scheduler.name=onecycle"]),
    ("batch100_lr", "batch 100, teacher lr 0.1 (the plain loop's)", [
        "ensemble.train.batch_size=100", "student.train.batch_size=100", "ensemble.train.optimizer.lr=0.1"]),
    ("select_last", "keep the last epoch, not the best on validation", [
        "ensemble.train.select=last", "student.train.select=last"]),
    ("all_data", "train on 99% of the 60,000 (1% kept to watch the curves)", ["data.val_size=0.01"]),
]


# Branches off the chain: (name, the step they change, what changes, overrides); seed 0 unless --branch-seeds.
BRANCHES = [
    ("final_fit", "batch100_lr", "train.final_fit: the best epoch count on the 10% hold-out, then all 60,000",
     ["ensemble.train.final_fit=true", "student.train.final_fit=true"]),
    ("student_jitter", "all_data", "the students see inputs jittered by 2 px; the teacher runs online on them",
     ["student.jitter=2"]),
    ("label_smoothing", "all_data", "the students' hard labels smoothed by 0.1 (the baseline, and the distilled "
     "student's (1 - alpha) term)", ["student.train.label_smoothing=0.1"]),
]


def overrides_up_to(step: str) -> list[str]:
    names = [s[0] for s in STEPS]
    branch = {b[0]: b for b in BRANCHES}.get(step)
    chain = STEPS[: names.index(branch[1] if branch else step) + 1] + ([branch[1:]] if branch else [])
    merged: dict[str, str] = {}
    for *_, overrides in chain:
        merged.update(o.split("=", 1) for o in overrides)
    return [f"{k}={v}" for k, v in merged.items()]


def summarise(results: dict) -> dict:
    student = results["student"]
    teacher, base, dist = student["teacher_test_errors"], student["baseline_test_errors"], student["test_errors"]
    return {"teacher_errors": teacher, "baseline_errors": base, "distilled_errors": dist,
            "gap_recovered": round((base - dist) / max(1, base - teacher), 3)}


def run_step(name: str, seed: int, overrides: list[str]) -> dict:
    args = ["configs/mnist_hinton.yaml", "--output-dir", RUNS, "--no-progress", "--set", f"seed={seed}",
            *[a for o in overrides for a in ("--set", o)]]
    distill = Path(sys.executable).with_name("distill")
    started = time.perf_counter()
    subprocess.run([str(distill), "run", *args], cwd=REPO, check=True)
    results = json.loads((REPO / RUNS / "results.json").read_text())
    return {"step": name, "seed": seed, "command": " ".join(["distill", "run", *args]),
            "wall_seconds": round(time.perf_counter() - started, 1), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            **summarise(results), "results": results}


# The reference seeds torch once with 0; other seeds run the same file with that one call redirected (its jitter
# draws from numpy, which it never seeds, so even seed 0 varies from run to run).
SEEDED_RUN = ("import runpy, sys, torch; seed = int(sys.argv.pop(1)); real = torch.manual_seed; "
              "torch.manual_seed = lambda _: real(seed); sys.argv[0] = sys.argv[1]; del sys.argv[1]; "
              "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_reference(seed: int) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", SEEDED_RUN, str(seed), str(REFERENCE), str(DATA), "30", "20", "20",
                           "0.9"], cwd=REPO, check=True, capture_output=True, text=True)
    return {"step": "reference", "seed": seed, "command": f"python {REFERENCE.name} DATA 30 20 20 0.9 (seed {seed})",
            "wall_seconds": round(time.perf_counter() - started, 1), "when": time.strftime("%Y-%m-%d %H:%M:%S"),
            **json.loads(done.stdout.strip().splitlines()[-1])}


def record(name: str, payload: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"[{name}] teacher {payload['teacher_errors']} baseline {payload['baseline_errors']} distilled "
          f"{payload['distilled_errors']} gap {payload['gap_recovered']:.0%} ({payload['wall_seconds']:.0f} s)",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="step names (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS), help="seeds of the final step")
    parser.add_argument("--branch-seeds", nargs="*", type=int, default=[0], help="seeds of the branches")
    parser.add_argument("--reference", action="store_true", help="also run the plain PyTorch loop, once per seed")
    parser.add_argument("--force", action="store_true", help="rerun what is recorded already")
    args = parser.parse_args()
    jobs = [(name, 0) for name, _, _ in STEPS[:-1]] + [(STEPS[-1][0], seed) for seed in args.seeds]
    jobs += [(branch[0], seed) for branch in BRANCHES for seed in args.branch_seeds]
    for name, seed in jobs:
        key = f"{name}_seed{seed}"
        if (args.only and name not in args.only) or ((OUT / f"{key}.json").is_file() and not args.force):
            continue
        print(f"[{key}] {' '.join(overrides_up_to(name))}", flush=True)
        record(key, run_step(name, seed, overrides_up_to(name)))
    for seed in args.seeds if args.reference else ():
        key = "reference" if seed == 0 else f"reference_seed{seed}"
        if args.force or not (OUT / f"{key}.json").is_file():
            record(key, run_reference(seed))


if __name__ == "__main__":
    main()
