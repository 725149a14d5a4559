"""Rerun the paper's MNIST experiments with ``distill run`` and keep each run's ``results.json``.

Every experiment is a shipped config (plus ``--set`` overrides for the temperature grid) run by the CLI, so
this script holds no training code. All runs share one output folder, so the 2x1200 teacher, the hard-label
baselines and ensemble member 0 are trained once and reused by every experiment that needs them.

    python benchmarks/paper_experiments.py                 # all experiments, skipping those already recorded
    python benchmarks/paper_experiments.py --only headline --force
    python benchmarks/paper_experiments.py --seeds 1 2 --only headline temperature   # more seeds of some
    python benchmarks/paper_report.py                      # then write BENCHMARKS.md from the JSON files
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "paper"
RUNS = "runs/paper"
TEMPERATURES = (1, 2, 2.5, 4, 8, 20)
STUDENT_WIDTHS = (30, 300)


def experiments() -> list[tuple[str, str, list[str]]]:
    """(name, config, overrides) in the order they run: the cheap ones reuse the headline teacher."""
    grid = [
        (f"temperature_w{width}_T{t:g}", "configs/mnist_hinton.yaml",
         [f"student.model.params.hidden=[{width},{width}]", f"student.temperature={t:g}"])
        for width in STUDENT_WIDTHS
        for t in TEMPERATURES
    ]
    return [
        ("headline", "configs/mnist_hinton.yaml", []),
        ("no3", "configs/mnist_no3.yaml", []),
        ("only78", "configs/mnist_only78.yaml", []),
        ("3pct", "configs/mnist_3pct.yaml", []),
        *grid,
        ("specialists", "configs/mnist_specialists.yaml", []),
        ("ensemble_arithmetic", "configs/mnist_ensemble.yaml", []),
        ("ensemble_geometric", "configs/mnist_ensemble.yaml", ["student.mean=geometric"]),
        # Distillation variants (issue 7): the headline teacher and 2x800 student, the same 30 epochs.
        ("variant_fitnets", "configs/mnist_hinton.yaml",
         ["student.method=fitnets", "student.fitnets={hint_layer: '3', guided_layer: '2', epochs: 5}"]),
        *[(f"variant_adversarial_{v}", "configs/mnist_hinton.yaml",
           ["student.method=adversarial", f"student.adversarial.variant={v}"]) for v in ("pretrained", "gan", "wgan")],
        ("sweep", "configs/mnist_hinton.yaml",
         ["student.model.params.hidden=[300,300]", "student.train.epochs=10", "sweep.num_cpus=1",
          "sweep.grid={student.temperature: [1, 2, 4, 8, 20], student.alpha: [0.1, 0.5, 0.9]}"]),
    ]


def record_name(name: str, seed: int) -> str:
    """Seed 0 keeps the experiment's own name, so the records written before seeds existed stay valid."""
    return name if seed == 0 else f"{name}_seed{seed}"


def run_one(name: str, config: str, overrides: list[str], seed: int = 0) -> dict:
    command = "sweep" if name == "sweep" else "run"
    overrides = overrides + ([f"seed={seed}"] if seed else [])
    args = [config, "--output-dir", RUNS, "--no-progress", *[a for o in overrides for a in ("--set", o)]]
    distill = Path(sys.executable).with_name("distill")
    started = time.perf_counter()
    subprocess.run([str(distill), command, *args], cwd=REPO, check=True)
    wall = time.perf_counter() - started
    results = json.loads((REPO / RUNS / "results.json").read_text())
    record = {"experiment": name, "seed": seed, "command": " ".join(["distill", command, *args]),
              "wall_seconds": round(wall, 1), "when": time.strftime("%Y-%m-%d %H:%M:%S"), **results}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{record_name(name, seed)}.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="experiment names or their prefixes (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0], help="seeds to run each experiment with")
    parser.add_argument("--force", action="store_true", help="rerun experiments that already have a JSON record")
    args = parser.parse_args()
    # Seed-major, so that every experiment of one seed shares that seed's teacher before the next is trained.
    for seed in args.seeds:
        for name, config, overrides in experiments():
            key = record_name(name, seed)
            if args.only and not any(name == p or name.startswith(p + "_") for p in args.only):
                continue
            if (OUT / f"{key}.json").is_file() and not args.force:
                print(f"[{key}] recorded already; --force reruns it", flush=True)
                continue
            print(f"[{key}] distill run {config} {' '.join(overrides)}", flush=True)
            record = run_one(name, config, overrides, seed)
            print(f"[{key}] done in {record['wall_seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
