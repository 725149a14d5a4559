"""A data-parallel member (``resources.workers_per_model: 2``, Ray Train, gloo) against a 1-worker member on MNIST:
same model, seed, global batch and epochs (goal: test accuracy within 0.5 points), and the wall time of each.

    python benchmarks/data_parallel.py [--epochs 5] [--hidden 256 256]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, mnist, report  # noqa: E402

WORK = REPO / "runs" / "data_parallel"


def run(workers: int, data, epochs: int, hidden: list[int]) -> dict:
    from ensemble import Ensemble
    from ensemble.models.registry import RegisteredModel

    out = WORK / f"workers_{workers}"
    shutil.rmtree(out, ignore_errors=True)
    factory = RegisteredModel("mlp", data.input_shape, data.num_classes, {"hidden": hidden})
    config = {"members": 1, "train": {"epochs": epochs, "batch_size": 128,
                                      "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
              "resources": {"num_cpus": 1, "workers_per_model": workers}}
    started = time.perf_counter()
    ens = Ensemble(factory, config, output_dir=out, show_progress=False).fit(data.train, data.val, data.test)
    result = ens.results_[0]
    return {"workers": workers, "cpus_per_worker": 1, "global_batch": 128, "epochs": epochs,
            "test_accuracy": result.metrics["test_accuracy"], "test_errors": result.metrics["test_errors"],
            "wall_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--hidden", type=int, nargs="*", default=[256, 256])
    args = parser.parse_args()
    data = mnist()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = [run(workers, data, args.epochs, args.hidden) for workers in (1, 2)]
    ray.shutdown()
    gap = 100 * abs(rows[1]["test_accuracy"] - rows[0]["test_accuracy"])
    report("data_parallel", rows, {"model": f"mlp {args.hidden}", "accuracy_gap_points": round(gap, 3),
                                   "goal": "<= 0.5 points"})


if __name__ == "__main__":
    main()
