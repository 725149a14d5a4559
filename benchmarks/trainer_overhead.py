"""Epoch time of our Trainer vs a bare PyTorch loop: same 2x1200 MLP, batch size, in-memory MNIST.

Both do the same work per epoch (a shuffled pass over the training set, then a validation pass); ours adds
loss-term bookkeeping, a verified checkpoint and the best-weights copy. Runs alternate so drift hits both.

    python benchmarks/trainer_overhead.py [--epochs 2] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from common import mnist, report
from ensemble.schema.sections import TrainConfig
from ensemble.models.registry import RegisteredModel
from ensemble.training.trainer import Trainer, TrainSpec


def bare_loop(factory, data, train: TrainConfig, seed: int) -> list[float]:
    torch.manual_seed(seed)
    model = factory()
    opt = torch.optim.SGD(model.parameters(), lr=train.optimizer.lr, momentum=train.optimizer.momentum)
    generator = torch.Generator().manual_seed(seed)
    x, y = data.train.x, data.train.y
    times = []
    for _ in range(train.epochs):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(order), train.batch_size):
            idx = order[i : i + train.batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            for i in range(0, len(data.val.y), train.eval_batch_size):
                model(data.val.x[i : i + train.eval_batch_size])
        times.append(time.perf_counter() - started)
    return times


def ours(factory, data, train: TrainConfig, seed: int) -> list[float]:
    spec = TrainSpec("bench", "member", factory, train, seed=seed)
    splits = {"train": data.train, "val": data.val}
    with tempfile.TemporaryDirectory() as workdir:
        result = Trainer(spec, splits, Path(workdir), "bench").fit()
    return [r["epoch_seconds"] for r in result.history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = mnist()
    factory = RegisteredModel("mlp", data.input_shape, 10, {"hidden": [1200, 1200]})
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, scheduler={"name": "none"},
                        optimizer={"name": "sgd", "lr": 0.05, "momentum": 0.9})
    rows, bare_all, ours_all = [], [], []
    for repeat in range(args.repeats):
        for name, fn, sink in (("bare PyTorch loop", bare_loop, bare_all), ("our Trainer", ours, ours_all)):
            times = fn(factory, data, train, seed=repeat)
            sink.extend(times)
            rows.append({"repeat": repeat, "loop": name, "epoch_seconds_mean": sum(times) / len(times),
                         "epochs": len(times)})
    bare_mean, ours_mean = sum(bare_all) / len(bare_all), sum(ours_all) / len(ours_all)
    report("trainer_overhead", rows, {
        "model": "mlp 2x1200, MNIST 54k train / 6k val in memory",
        "batch_size": args.batch_size, "threads": args.threads,
        "bare_epoch_seconds": bare_mean, "ours_epoch_seconds": ours_mean,
        "ratio_ours_over_bare": ours_mean / bare_mean, "goal": "<= 1.05",
    })


if __name__ == "__main__":
    main()
