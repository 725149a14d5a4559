"""Streaming data at scale: MNIST written as an ImageFolder of PNG files, trained on without materialising it.

1. ``distill run`` on the PNG folder (``data.name: imagefolder``, streamed) against the in-memory MNIST path, same
   epochs, seed and models: test accuracy of teacher and student (goal: within 0.3 points).
2. One member trained by streaming on S and on 4S images (both above ``data.memory_budget_mb``): peak RSS of the
   driver and of the actor (goal: the 4S run's peak at most 1.2x the S run's).
3. Training throughput, streamed PNGs against in-memory tensors, one member on MNIST, 2 cores (goal: >= 0.7x):
   decoding every PNG every epoch, and reading the PNGs decoded once into a memory-mapped array
   (``data.decoded_cache``; the one-time decode is timed apart).

    python benchmarks/data_scale.py
    python benchmarks/data_scale.py --throughput-only      # part 3 alone
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
RAW = REPO.parent / "shared" / "data" / "MNIST" / "raw"
WORK = REPO / "runs" / "data_scale"
PNG = WORK / "mnist_png"
OUT = REPO / "benchmarks" / "results" / "data_scale.json"


def write_mnist_png() -> Path:
    """``mnist_png/{train,test}/<digit>/<i>.png`` from the raw files (once)."""
    from torchvision.io import write_png

    if (PNG / "done").is_file():
        return PNG
    for part, prefix in (("train", "train"), ("test", "t10k")):
        images = np.frombuffer((RAW / f"{prefix}-images-idx3-ubyte").read_bytes(), np.uint8, offset=16)
        labels = np.frombuffer((RAW / f"{prefix}-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
        images = torch.from_numpy(images.reshape(-1, 1, 28, 28).copy())
        for digit in range(10):
            (PNG / part / str(digit)).mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            write_png(image, str(PNG / part / str(int(label)) / f"{i:05d}.png"))
    (PNG / "done").write_text("")
    return PNG


def subset_folder(size: int) -> Path:
    """The first ``size`` training PNGs (and all test PNGs), as symbolic links."""
    root = WORK / f"subset_{size}"
    if root.is_dir():
        return root
    files = sorted((PNG / "train").glob("*/*.png"), key=lambda p: p.name)[:size]
    for path in files:
        target = root / "train" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    (root / "test").symlink_to(PNG / "test")
    return root


def pipeline_accuracy(name: str, data: dict) -> dict:
    mlp = lambda hidden: {"name": "mlp", "params": {"hidden": hidden}}  # noqa: E731
    train = {"epochs": 3, "batch_size": 100, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}}
    config = {"seed": 0, "output_dir": str(WORK / name), "data": {"val_size": 0.1, **data},
              "ensemble": {"members": 1, "model": mlp([512, 512]), "train": train, "resources": {"num_cpus": 2}},
              "generalist": {"enabled": False}, "specialists": {"enabled": False},
              "student": {"model": mlp([256]), "temperature": 4, "baseline": False, "train": train,
                          "registered_model": None, "resources": {"num_cpus": 2}},
              "tracking": {"uri": f"sqlite:///{WORK}/mlflow.db", "experiment": "data-scale"}}
    path = WORK / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("distill")), "run", str(path), "--no-progress"], check=True)
    results = json.loads((WORK / name / "results.json").read_text())
    return {"teacher_test_accuracy": results["ensemble"]["test_accuracy"],
            "student_test_accuracy": results["student"]["test_accuracy"],
            "seconds": round(time.perf_counter() - started)}


def child(root: str, in_memory: str, workers: int, decoded_cache: str) -> None:
    """One member, one epoch, in a Ray actor; prints peaks and throughput as JSON (run in its own process)."""
    from ensemble import Ensemble
    from ensemble.data.registry import load_dataset
    from ensemble.models.registry import RegisteredModel

    name = "mnist" if root == "mnist" else "imagefolder"
    flag = {"true": True, "false": False}.get(in_memory, in_memory)
    started = time.perf_counter()
    data = load_dataset(name, str(REPO.parent / "shared" / "data") if name == "mnist" else root, val_size=0.05,
                        in_memory=flag, memory_budget_mb=1, num_workers=workers,
                        decoded_cache=None if decoded_cache == "-" else decoded_cache)
    load_seconds = time.perf_counter() - started
    factory = RegisteredModel("mlp", data.input_shape, 10, {"hidden": [256]})
    ens = Ensemble(factory, {"members": 1, "train": {"epochs": 1, "batch_size": 100}, "resources": {"num_cpus": 2}},
                   output_dir=WORK / f"child_{time.time_ns()}", show_progress=False, ray_num_cpus=2)
    ens.fit(data.train, data.val)
    result = ens.results_[0]
    files = sum(len(split.x.dataset) for split in (data.train, data.test)) if data.train.lazy else 0
    print(json.dumps({"train_examples": len(data.train), "streamed": data.train.lazy, "load_seconds": load_seconds,
                      "image_files": files,
                      "samples_per_second": result.history[-1]["samples_per_second"],
                      "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "actor_peak_rss_mb": result.placement.get("peak_rss_mb")}))


def run_child(root: str, in_memory: str, workers: int, decoded_cache: str = "-") -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", root, in_memory, str(workers), decoded_cache],
                          check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_throughput() -> dict:
    """In memory, streamed, streamed from a decoded copy (made afresh, so its one-time decode is in load_seconds),
    one after the other with nothing else running: the ratios are of one run."""
    import shutil

    decoded = WORK / "decoded"
    shutil.rmtree(decoded, ignore_errors=True)
    return {"in_memory": run_child("mnist", "true", 0), "streamed": run_child(str(PNG), "false", 1),
            "decoded": run_child(str(PNG), "false", 1, str(decoded))}


def ratios(throughput: dict) -> dict:
    base = throughput["in_memory"]["samples_per_second"]
    return {"streamed_over_in_memory_throughput": throughput["streamed"]["samples_per_second"] / base,
            "decoded_over_in_memory_throughput": throughput["decoded"]["samples_per_second"] / base}


def throughput_only() -> None:
    record = json.loads(OUT.read_text())
    write_mnist_png()
    throughput = measure_throughput()
    record.update(throughput=throughput, throughput_when=time.strftime("%Y-%m-%d %H:%M:%S"), **ratios(throughput))
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(throughput, indent=1), ratios(throughput))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, metavar=("ROOT", "IN_MEMORY", "WORKERS", "DECODED_CACHE"))
    parser.add_argument("--size", type=int, default=12000, help="S; the larger run uses 4S")
    parser.add_argument("--throughput-only", action="store_true", help="rerun part 3 alone (a quieter machine)")
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
    if args.throughput_only:
        return throughput_only()
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    write_mnist_png()
    png_seconds = time.perf_counter() - started
    accuracy = {"in_memory": pipeline_accuracy("mnist_memory", {"name": "mnist", "root": "../shared/data"}),
                "streamed": pipeline_accuracy("mnist_png", {"name": "imagefolder", "root": str(PNG),
                                                            "in_memory": False, "num_workers": 1})}
    memory = {f"{k}S": run_child(str(subset_folder(k * args.size)), "false", 1) for k in (1, 4)}
    throughput = measure_throughput()
    record = {"png_write_seconds": round(png_seconds), "accuracy": accuracy, "memory": memory,
              "throughput": throughput, "when": time.strftime("%Y-%m-%d %H:%M:%S"),
              "peak_ratio_4S_over_S": {who: memory["4S"][f"{who}_peak_rss_mb"] / memory["1S"][f"{who}_peak_rss_mb"]
                                       for who in ("driver", "actor")},
              **ratios(throughput)}
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
