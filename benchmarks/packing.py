"""Packed members (``ensemble.pack``) against one actor per member: 8 small members (2x128 MLP) on MNIST, 2 cores.

Every layout trains the same 8 members for the same epochs on a local Ray of 2 CPUs, through ``Ensemble.fit``
(actor start, data in the object store, checkpoints and all): one fractional actor per member (num_cpus 0.25, the
way small members share a machine without packing), two packs of 4 (one CPU each), one pack of 8 (both CPUs).
Throughput is member-images per second of wall clock: members x epochs x training images / seconds. Layouts run
one after the other in this process, after an unmeasured warm-up of the same 8 actors, so their ratio is of one
run.

    python benchmarks/packing.py [--epochs 2] [--train-limit 20000]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, mnist, report  # noqa: E402

WORK = REPO / "runs" / "packing"
MEMBERS = 8
LAYOUTS = {  # name: (pack, num_cpus per actor)
    "one actor per member (0.25 CPU each)": (1, 0.25),
    "2 packs of 4 (1 CPU each)": (4, 1.0),
    "1 pack of 8 (2 CPUs)": (8, 2.0),
}


def run_layout(name: str, pack: int, num_cpus: float, data, epochs: int) -> dict:
    from ensemble import Ensemble
    from ensemble.models.registry import RegisteredModel

    out = WORK / name.split(" (")[0].replace(" ", "_")
    shutil.rmtree(out, ignore_errors=True)
    factory = RegisteredModel("mlp", data.input_shape, data.num_classes, {"hidden": [128, 128]})
    config = {"members": MEMBERS, "pack": pack, "train": {"epochs": epochs, "batch_size": 100},
              "resources": {"num_cpus": num_cpus}}
    ens = Ensemble(factory, config, output_dir=out, show_progress=False)
    started = time.perf_counter()
    ens.fit(data.train, data.val, data.test)
    seconds = time.perf_counter() - started
    accuracies = [r.metrics["test_accuracy"] for r in ens.results_]
    return {"layout": name, "pack": pack, "cpus_per_actor": num_cpus, "actors": -(-MEMBERS // pack),
            "wall_s": round(seconds, 1), "member_images_per_s": MEMBERS * epochs * len(data.train) / seconds,
            "mean_test_accuracy": statistics.mean(accuracies)}


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=20000)
    args = parser.parse_args()
    data = mnist(args.train_limit)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    # Unmeasured first: Ray's first actors also pay for the worker pool's start, which no layout should carry.
    run_layout("warm-up (0.25 CPU each)", 1, 0.25, data, 1)
    rows = [run_layout(name, pack, cpus, data, args.epochs) for name, (pack, cpus) in LAYOUTS.items()]
    ray.shutdown()
    separate = rows[0]["member_images_per_s"]
    for row in rows:
        row["vs_separate"] = row["member_images_per_s"] / separate
    report("packing", rows, {"members": MEMBERS, "epochs": args.epochs, "train_images": len(data.train),
                             "pack_of_8_over_separate": rows[-1]["vs_separate"], "goal": ">= 2.5x"})


if __name__ == "__main__":
    main()
