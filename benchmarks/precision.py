"""bf16 against fp32 on the CPU: the digits ensemble (the embedded demo's ensemble stage), same seeds.

    python benchmarks/precision.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "precision.json"
WORK = REPO / "runs" / "precision"


def run(precision: str) -> dict:
    out = WORK / precision
    args = [str(Path(sys.executable).with_name("distill")), "ensemble", "--output-dir", str(out), "--no-progress",
            "--tracking-uri", f"sqlite:///{WORK}/mlflow.db", "--set", f"ensemble.train.precision={precision}"]
    started = time.perf_counter()
    subprocess.run(args, cwd=REPO, check=True, capture_output=True)
    results = json.loads((out / "results.json").read_text())
    ens = results["ensemble"]
    return {"members": [m["test_accuracy"] for m in ens["members"]],
            "generalist": results["generalist"]["test_accuracy"],
            "arithmetic": ens["test_accuracy_arithmetic"], "geometric": ens["test_accuracy_geometric"],
            "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    rows = {p: run(p) for p in ("fp32", "bf16")}
    gap = 100 * abs(rows["bf16"]["arithmetic"] - rows["fp32"]["arithmetic"])
    record = {"runs": rows, "ensemble_accuracy_gap_points": round(gap, 2), "goal": "<= 0.5 points",
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print("| precision | members | generalist | ensemble (arithmetic) | ensemble (geometric) | wall s |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {', '.join(f'{a:.4f}' for a in r['members'])} | {r['generalist']:.4f} | "
              f"{r['arithmetic']:.4f} | {r['geometric']:.4f} | {r['seconds']} |")
    print(f"ensemble accuracy, bf16 vs fp32: {gap:.2f} points apart (goal <= 0.5)")


if __name__ == "__main__":
    main()
