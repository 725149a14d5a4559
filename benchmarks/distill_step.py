"""A distillation epoch with cached teacher outputs vs a plain student epoch (goal <= 1.05x), and with the
teacher run online (what augmentation needs); then student vs teacher-ensemble inference latency.

Same 2x800 student, same in-memory MNIST subset, same trainer; the teacher is an ensemble of 2x1200 nets
(their weights do not matter for timing). Runs alternate so drift hits every variant alike.

    python benchmarks/distill_step.py [--train-limit 20000] [--members 2] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from common import mnist, report
from distill.export import measure_latency
from distill.objective import DistillationObjective
from ensemble.training.teacher import EnsembleOutputs
from ensemble.schema.sections import TrainConfig
from ensemble.models.registry import RegisteredModel, build_model, count_parameters
from ensemble.training.objectives import CrossEntropy
from ensemble.training.trainer import Trainer, TrainSpec


def epoch_seconds(objective, factory, data, train: TrainConfig) -> float:
    spec = TrainSpec("bench", "student", factory, train, seed=0, objective=objective)
    with tempfile.TemporaryDirectory() as workdir:
        result = Trainer(spec, {"train": data.train, "val": data.val}, Path(workdir), "bench").fit()
    return sum(r["epoch_seconds"] for r in result.history) / len(result.history)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = mnist(args.train_limit)
    student = RegisteredModel("mlp", data.input_shape, 10, {"hidden": [800, 800]})
    torch.manual_seed(0)
    members = [build_model("mlp", data.input_shape, 10, {"hidden": [1200, 1200]}).eval() for _ in range(args.members)]
    teacher = EnsembleOutputs(members)
    with torch.no_grad():
        cache = teacher(data.train.x, 20.0)
    train = TrainConfig(epochs=1, batch_size=128, scheduler={"name": "none"})
    variants = {
        "plain student (hard labels)": lambda: CrossEntropy(),
        "distillation, cached teacher": lambda: DistillationObjective("kd", 20.0, 0.9, cache=cache),
        "distillation, online teacher": lambda: DistillationObjective("kd", 20.0, 0.9, teacher=teacher),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, make in variants.items():
            times[name].append(epoch_seconds(make(), student, data, train))
    plain = sum(times["plain student (hard labels)"]) / args.repeats
    rows = [{"variant": name, "epoch_seconds": sum(t) / len(t), "ratio_vs_plain": sum(t) / len(t) / plain}
            for name, t in times.items()]

    batch = data.test.x[:256]
    student_model = student().eval()
    student_latency = measure_latency(student_model, batch)
    teacher_latency = measure_latency(lambda x: teacher(x, 1.0).probs, batch)
    report("distill_step", rows, {
        "train_examples": len(data.train), "threads": args.threads,
        "cached_over_plain": rows[1]["ratio_vs_plain"], "online_over_plain": rows[2]["ratio_vs_plain"],
        "goal": "cached <= 1.05",
        "student_params": count_parameters(student_model), "teacher_params": count_parameters(teacher),
        "student_ms_per_batch_256": student_latency["median_ms"],
        "teacher_ms_per_batch_256": teacher_latency["median_ms"],
        "teacher_over_student_latency": teacher_latency["median_ms"] / student_latency["median_ms"],
    })


if __name__ == "__main__":
    main()
