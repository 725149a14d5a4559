"""GPU measurements (run on a machine with CUDA; ``--smoke`` runs a tiny version anywhere to check the script).

1. Images/s and peak GPU memory of one member, fp32 against bf16 (resnet8x4 on CIFAR-shaped tensors).
2. 1, 2, 4 and 8 small members (2x128 MLP) per GPU as fractional Ray actors, and as one pack (``ensemble.pack``):
   member-images/s of all of them together.
3. A short schedule of each CIFAR-100 config (its teacher and student, 2 epochs on CIFAR-shaped random tensors:
   the machine cannot download CIFAR), seconds per epoch.

    python benchmarks/gpu.py [--smoke]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ensemble import Ensemble
from ensemble.schema.sections import TrainConfig
from ensemble.data.split import Split
from ensemble.models.registry import RegisteredModel
from ensemble.training.trainer import Trainer, TrainSpec

OUT = Path(__file__).resolve().parent / "results" / "gpu.json"


def cifar_like(n: int, classes: int = 100) -> Split:
    generator = torch.Generator().manual_seed(0)
    return Split(torch.rand(n, 3, 32, 32, generator=generator), torch.randint(0, classes, (n,), generator=generator))


def one_member(name: str, precision: str, n: int, device: str) -> dict:
    train = TrainConfig(epochs=1, batch_size=128, precision=precision, channels_last=device == "cuda")
    spec = TrainSpec("m", "member", RegisteredModel(name, (3, 32, 32), 100), train)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as workdir:
        result = Trainer(spec, {"train": cifar_like(n), "val": cifar_like(256)}, Path(workdir), precision,
                         device).fit()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return {"images_per_second": result.history[-1]["samples_per_second"], "peak_gpu_mb": peak}


def small_members(members: int, n: int, gpus: float, pack: int = 1) -> dict:
    """``members`` 2x128 MLPs on one GPU: one fractional actor each (``pack: 1``), or packs of ``pack`` sharing
    it; throughput is member-images per second of wall clock (actor start and data placement included)."""
    factory = RegisteredModel("mlp", (3, 32, 32), 100, {"hidden": [128, 128]})
    actors = -(-members // pack)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        Ensemble(factory, {"members": members, "pack": pack, "train": {"epochs": 1, "batch_size": 256},
                           "resources": {"num_cpus": 1, "num_gpus": gpus / actors}},
                 output_dir=out, show_progress=False).fit(cifar_like(n), cifar_like(256))
    seconds = time.perf_counter() - started
    return {"members": members, "pack": pack, "actors": actors, "wall_seconds": round(seconds, 1),
            "member_images_per_second": members * n / seconds}


def cifar_configs(n: int, device: str) -> dict:
    from distill.config import load_config

    rows = {}
    for config in ("cifar100_resnet32x4_resnet8x4", "cifar100_wrn40_2_wrn16_2"):
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{config}.yaml")
        for role, section in (("teacher", cfg.ensemble), ("student", cfg.student)):
            train = section.train.model_copy(update={"epochs": 2})
            spec = TrainSpec(role, role, RegisteredModel(section.model.name, (3, 32, 32), 100), train)
            with tempfile.TemporaryDirectory() as workdir:
                result = Trainer(spec, {"train": cifar_like(n), "val": cifar_like(256)}, Path(workdir), config,
                                 device).fit()
            rows[f"{config}:{role}:{section.model.name}"] = {
                "epoch_seconds": sum(r["epoch_seconds"] for r in result.history) / len(result.history)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on whatever device there is")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n = 512 if args.smoke else 50_000
    gpus, counts = (1.0 if device == "cuda" else 0.0), ((1, 2) if args.smoke else (1, 2, 4, 8))
    record = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "smoke": args.smoke,
              "precision": {p: one_member("resnet8x4", p, n, device) for p in ("fp32", "bf16")},
              "fractional": [small_members(k, n, gpus) for k in counts],
              "packed": [small_members(k, n, gpus, pack=k) for k in counts],
              "cifar100_configs": cifar_configs(n // 10 if args.smoke else n, device),
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    (OUT.with_name("gpu_smoke.json") if args.smoke else OUT).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
