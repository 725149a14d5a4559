"""Where the hard-label baseline's extra errors come from: the same 2x800 student three ways, 3 seeds each.

The recipe ablation (BENCHMARKS section 1b) left the pipeline's hard-label baseline at 164 +- 2 test errors against
the plain loop's 153, under the plain loop's own recipe. This isolates the training loop from the rest:

- ``bare``: a few lines of plain PyTorch (written here, not copied from the reference) on all 60,000 images;
- ``trainer``: the project's ``Trainer`` on the very same tensors, in process, no Ray;
- ``trainer_split``: ``Trainer`` on the pipeline's own split (``load_dataset``, val_size 0.01, 59,400 images).

All three: one-cycle (max lr 0.05, SGD momentum 0.9), batch 100, 20 epochs, the last epoch kept, 1 thread each.

    python benchmarks/baseline_bisect.py [--epochs 20] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ensemble.schema.sections import TrainConfig
from ensemble.data.split import Split
from ensemble.data.registry import load_dataset
from ensemble.models.registry import RegisteredModel
from ensemble.training.trainer import Trainer, TrainSpec

REPO = Path(__file__).resolve().parents[1]
RAW = REPO.parent / "shared" / "data" / "MNIST" / "raw"
OUT = REPO / "benchmarks" / "results" / "recipe" / "baseline_bisect.json"


def read_idx(name: str, offset: int) -> np.ndarray:
    return np.frombuffer((RAW / name).read_bytes(), np.uint8, offset=offset)


def raw_mnist() -> dict[str, Split]:
    def images(name):
        return torch.tensor(read_idx(name, 16).reshape(-1, 1, 28, 28), dtype=torch.float32) / 255

    def labels(name):
        return torch.tensor(read_idx(name, 8), dtype=torch.long)

    return {"train": Split(images("train-images-idx3-ubyte"), labels("train-labels-idx1-ubyte")),
            "test": Split(images("t10k-images-idx3-ubyte"), labels("t10k-labels-idx1-ubyte"))}


def recipe(epochs: int, weight_decay: float = 0.0) -> TrainConfig:
    return TrainConfig.model_validate({"epochs": epochs, "batch_size": 100, "select": "last",
                                       "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9,
                                                     "weight_decay": weight_decay},
                                       "scheduler": {"name": "onecycle"}})


def student() -> RegisteredModel:
    return RegisteredModel("mlp", (1, 28, 28), 10, {"hidden": [800, 800]})


def errors(model: torch.nn.Module, test: Split) -> int:
    model.eval()
    with torch.no_grad():
        return int((model(test.x).argmax(1) != test.y).sum())


def with_dropout_layers() -> torch.nn.Module:
    """The same 2x800 net with a ``Dropout(0.0)`` after the input and each hidden layer, as the plain loop builds
    it (dropout with p = 0 is the identity, so this should change nothing)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.0))
    for width_in, width_out in ((784, 800), (800, 800)):
        net.extend([torch.nn.Linear(width_in, width_out), torch.nn.ReLU(), torch.nn.Dropout(0.0)])
    return net.append(torch.nn.Linear(800, 10))


def bare(data: dict[str, Split], epochs: int, seed: int, build=None, label_smoothing: float = 0.0) -> int:
    torch.manual_seed(seed)
    model = (build or student())()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = len(data["train"].y) // 100
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05, total_steps=epochs * steps)
    x, y = data["train"].x, data["train"].y
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y))
        for b in range(steps):
            idx = order[b * 100:(b + 1) * 100]
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=label_smoothing)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return errors(model, data["test"])


def through_trainer(data: dict[str, Split], epochs: int, seed: int, weight_decay: float = 0.0) -> int:
    splits = {"train": data["train"], "val": Split(data["test"].x[:500], data["test"].y[:500])}
    spec = TrainSpec("student_baseline", "student_baseline", student(), recipe(epochs, weight_decay), seed)
    with tempfile.TemporaryDirectory() as workdir:
        result = Trainer(spec, splits, Path(workdir), "bisect").fit()
    model = student()()
    model.load_state_dict(result.state_dict)
    return errors(model, data["test"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="*", default=["bare", "trainer", "trainer_split"])
    parser.add_argument("--out", default=str(OUT), help="merged into an existing record: variants run now replace "
                        "theirs, the others are kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    raw = raw_mnist()
    split = load_dataset("mnist", str(REPO.parent / "shared" / "data"), val_size=0.01, seed=0)
    pipeline_split = {"train": split.train, "test": split.test}
    variants = {"bare": lambda s: bare(raw, args.epochs, s), "trainer": lambda s: through_trainer(raw, args.epochs, s),
                "trainer_split": lambda s: through_trainer(pipeline_split, args.epochs, s),
                "dropout_layers": lambda s: bare(raw, args.epochs, s, with_dropout_layers),
                "trainer_wd5e-4": lambda s: through_trainer(raw, args.epochs, s, 5e-4),
                "bare_ls0.1": lambda s: bare(raw, args.epochs, s, label_smoothing=0.1)}
    rows = {}
    for name, run in variants.items():
        if name not in args.variants:
            continue
        runs = []
        for seed in args.seeds:
            started = time.perf_counter()
            runs.append(run(seed))
            print(f"{name:14s} seed {seed}: {runs[-1]} errors ({time.perf_counter() - started:.0f} s)", flush=True)
        rows[name] = {"errors": runs, "mean": statistics.mean(runs),
                      "std": statistics.stdev(runs) if len(runs) > 1 else 0.0}
    print("\n| variant | test errors per seed | mean ± std |\n|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {', '.join(map(str, row['errors']))} | {row['mean']:.1f} ± {row['std']:.1f} |")
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {"variants": {}}
    record["variants"].update({name: {**row, "threads": args.threads, "when": time.strftime("%Y-%m-%d %H:%M:%S")}
                               for name, row in rows.items()})
    record.update({"epochs": args.epochs, "seeds": args.seeds})
    out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
