"""Throughput of N members on N Ray workers vs the same N members on one worker (one thread each).

On this 2-core machine N = 2. Each case starts its own local Ray: one CPU (members train one after
another) vs N CPUs (members train at once). Throughput = training examples processed per wall-clock second,
measured while at least one actor trains (excluding actor start-up) and end to end (including it).

    python benchmarks/ray_scaling.py [--members 2] [--epochs 1] [--train-limit 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

from common import mnist, report
from ensemble.schema.sections import TrainConfig
from ensemble.models.registry import RegisteredModel
from ensemble.cluster.runner import Resources, TrainJob, train_many
from ensemble.training.trainer import TrainSpec


def run_case(workers: int, members: int, data, train: TrainConfig) -> dict:
    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        factory = RegisteredModel("mlp", data.input_shape, 10, {"hidden": [1200, 1200]})
        splits = {"train": data.train, "val": data.val}
        with tempfile.TemporaryDirectory() as root:
            jobs = [TrainJob(TrainSpec(f"member_{i}", "member", factory, train, seed=i), Path(root) / str(i),
                             f"bench-{i}", Resources(num_cpus=1)) for i in range(members)]
            started = time.perf_counter()
            results = train_many(jobs, splits, show_progress=False)
            wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    examples = members * train.epochs * len(data.train)
    busy = busy_seconds([(r.placement["started"], r.placement["finished"]) for r in results])
    return {"workers": workers, "members": members, "wall_seconds": wall,
            "examples_per_second_end_to_end": examples / wall,
            "examples_per_second_training": examples / busy}


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of the actors' training intervals: time during which at least one trained."""
    total, current_end = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > current_end:
            total += end - max(start, current_end)
            current_end = end
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-limit", type=int, default=20000)
    args = parser.parse_args()
    data = mnist(args.train_limit)
    train = TrainConfig(epochs=args.epochs, batch_size=128, scheduler={"name": "none"})
    one = run_case(1, args.members, data, train)
    many = run_case(args.members, args.members, data, train)
    report("ray_scaling", [one, many], {
        "speedup_training": many["examples_per_second_training"] / one["examples_per_second_training"],
        "speedup_end_to_end": many["examples_per_second_end_to_end"] / one["examples_per_second_end_to_end"],
        "goal": ">= 1.8 (training throughput, N = 2)",
    })


if __name__ == "__main__":
    main()
