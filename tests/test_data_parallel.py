"""``resources.workers_per_model``: one model trained by two Ray Train workers (gloo on the CPU) is the model one
worker trains on the same global batches; a killed run resumes; a group larger than the cluster is one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ensemble import Ensemble
from ensemble.base.errors import ResourceError
from ensemble.models.registry import RegisteredModel


def _config(workers: int, epochs: int = 2) -> dict:
    # 1,294 digits / 64 leaves a last batch of 14: seven rows per worker, every step split evenly.
    return {"members": 1, "train": {"epochs": epochs, "batch_size": 64, "select": "last",
                                    "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9}},
            "resources": {"num_cpus": 1, "workers_per_model": workers}}


def test_two_workers_train_the_model_one_worker_trains(digits, tmp_path, ray_cpu):
    factory = RegisteredModel("mlp", digits.input_shape, digits.num_classes, {"hidden": [32]})
    fitted = {}
    for workers in (1, 2):
        # jitter: each worker augments the whole global batch alike before taking its rows
        ens = Ensemble(factory, _config(workers), jitter=1, output_dir=tmp_path / f"w{workers}", show_progress=False)
        fitted[workers] = ens.fit(digits.train, digits.val, digits.test)
    one, two = (fitted[w].results_[0] for w in (1, 2))
    assert two.placement.get("workers") == 2 and one.placement.get("workers") is None
    for key, value in one.state_dict.items():
        torch.testing.assert_close(two.state_dict[key], value, atol=1e-5, rtol=1e-4)
    assert two.metrics["test_accuracy"] == pytest.approx(one.metrics["test_accuracy"], abs=0.003)
    (folder,) = (tmp_path / "w2").glob("member_0-*")
    assert {"result.json", "model.pt", "logits.pt"} <= {p.name for p in folder.iterdir()}


def test_more_workers_than_the_cluster_holds_is_one_line(digits, tmp_path, ray_cpu):
    factory = RegisteredModel("mlp", digits.input_shape, digits.num_classes, {"hidden": [8]})
    ens = Ensemble(factory, _config(3), output_dir=tmp_path, show_progress=False)
    with pytest.raises(ResourceError, match=r"^member_0: resources.workers_per_model=3 workers of num_cpus=1"):
        ens.fit(digits.train, digits.val)


# Two Ray Train starts, about 95 s; CI resumes killed single-actor members (test_faults, test_driver_kill).
@pytest.mark.slow
def test_a_killed_data_parallel_run_resumes(tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "-m", "distill.cli", "ensemble", "--output-dir", str(out), "--no-progress",
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--set", "generalist.enabled=false",
            "--set", "specialists.enabled=false", "--set", "ensemble.members=1", "--set", "ensemble.train.epochs=5",
            "--set", "ensemble.model.params.hidden=[128]", "--set", "ensemble.resources.workers_per_model=2",
            "--set", "ray.num_cpus=2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 240
    while not list(out.glob("ensemble/member_0-*/checkpoints/epoch_0002.pt")):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before two epochs: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, "two epochs never finished"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its local Ray and both workers, by process group
    proc.wait(timeout=60)
    time.sleep(1)
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    member = json.loads((out / "results.json").read_text())["ensemble"]["members"][0]
    assert member["resumed_from_epoch"] >= 2 and member["epochs_trained"] == 5
    assert member["reused"] is False
