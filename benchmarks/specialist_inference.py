"""Cost of Eq. 5 combined inference per example vs one generalist forward, MNIST test set, batched.

Trains (or reuses from --output-dir) the generalist and specialists of configs/mnist_specialists.yaml, then
times, on the 10,000 test images: the generalist's forward pass; the whole combined prediction (generalist,
the active specialists on their rows only, and the L-BFGS solve of Eq. 5); and the solve alone.

    python benchmarks/specialist_inference.py [--output-dir runs/mnist_specialists] [--repeats 5]
    python benchmarks/specialist_inference.py --name specialist_inference_2x1200 \
        --output-dir runs/mnist_specialists_2x1200 --set "ensemble.model.params.hidden=[1200,1200]"

The ratio depends on the generalist's size: a tiny one is memory-bound, so gathering each specialist's
rows costs about as much as its forward pass; a large one makes the forward passes dominate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from common import REPO, report
from distill.config import load_config
from ensemble.stage import load_data, run_ensemble_stage
from ensemble.training.trainer import predict_logits
from specialists.combine import combine
from specialists.stage import run_specialist_stage


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(REPO / "configs" / "mnist_specialists.yaml"))
    parser.add_argument("--output-dir", default=str(REPO / "runs" / "mnist_specialists"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override")
    parser.add_argument("--name", default="specialist_inference", help="name of the results JSON")
    args = parser.parse_args()
    config = load_config(args.config, [*args.overrides, f"output_dir={args.output_dir}"])
    data = load_data(config)
    ensemble, _ = run_ensemble_stage(config, data, Path(args.output_dir), show_progress=False)
    specialists, _ = run_specialist_stage(config, config.specialists, data, ensemble, Path(args.output_dir),
                                          show_progress=False)
    torch.set_num_threads(args.threads)
    x = data.test.x
    generalist_seconds = best_of(args.repeats, lambda: predict_logits(specialists.generalist, x))
    combined_seconds = best_of(args.repeats, lambda: specialists.predict_proba(x))
    info = dict(specialists.last_info_)

    inputs = specialists.combination_inputs(x)
    solve_seconds = best_of(args.repeats, lambda: combine(*inputs, specialists.max_iter, specialists.tolerance,
                                                          specialists.solver))
    n = len(x)
    rows = [
        {"step": "generalist forward", "seconds": generalist_seconds, "us_per_example": 1e6 * generalist_seconds / n},
        {"step": "Eq. 5 solve only", "seconds": solve_seconds, "us_per_example": 1e6 * solve_seconds / n},
        {"step": "combined (generalist + active specialists + solve)", "seconds": combined_seconds,
         "us_per_example": 1e6 * combined_seconds / n},
    ]
    from ensemble.models.registry import count_parameters

    report(args.name, rows, {
        "generalist_parameters": count_parameters(specialists.generalist),
        "examples": n, "specialists": len(specialists.groups), "groups": str(specialists.groups),
        "solver": specialists.solver, "solver_iterations": info["iterations"], "optimised_examples": info["optimised_examples"],
        "ratio_combined_over_generalist": combined_seconds / generalist_seconds, "goal": "<= 3",
    })


if __name__ == "__main__":
    main()
