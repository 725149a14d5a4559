"""Faults lose nothing: a member's actor killed mid-training restarts, resumes from its checkpoint, and ends
with the same weights as an undisturbed run."""

import os
import signal
import time
from pathlib import Path

import pytest
import ray
import torch

from ensemble.cluster.runner import TrainerActor, put_splits
from ensemble.training.trainer import Trainer, TrainSpec

from helpers import quick_train, small_mlp_factory

pytestmark = pytest.mark.usefixtures("ray_cpu")
EPOCHS = 12


def _spec(digits):
    factory = small_mlp_factory(digits.input_shape, digits.num_classes, hidden=(256, 256))
    return TrainSpec("member_0", "member", factory, quick_train(EPOCHS), seed=5)


@pytest.fixture(scope="module")
def undisturbed(digits, tmp_path_factory):
    torch.set_num_threads(1)  # the actor trains with one thread: same arithmetic, same weights
    spec = _spec(digits)
    splits = {"train": digits.train, "val": digits.val, "test": digits.test}
    return Trainer(spec, splits, tmp_path_factory.mktemp("calm"), "fault-test").fit()


@pytest.mark.parametrize("how", ["ray.kill", "SIGKILL"])
def test_killed_actor_restarts_and_resumes_from_its_checkpoint(how, digits, undisturbed, tmp_path):
    spec = _spec(digits)
    actor = TrainerActor.options(num_cpus=1, max_concurrency=2, max_restarts=2, max_task_retries=2).remote(1, 0)
    splits = put_splits({"train": digits.train, "val": digits.val, "test": digits.test})
    result_ref = actor.fit.remote(spec, splits, str(tmp_path), "fault-test")
    deadline = time.time() + 120
    while (epoch := ray.get(actor.progress.remote()).get("epoch", 0)) < 3:
        assert time.time() < deadline, "training never reached epoch 3"
        time.sleep(0.02)
    if how == "ray.kill":
        ray.kill(actor, no_restart=False)
    else:
        os.kill(ray.get(actor.placement.remote())["pid"], signal.SIGKILL)
    result = ray.get(result_ref, timeout=300)
    assert result.resumed_from_epoch >= epoch, "resumed from the last checkpoint, not from scratch"
    assert [r["epoch"] for r in result.history] == list(range(1, EPOCHS + 1))
    checkpoints = sorted(p.name for p in (Path(tmp_path) / "checkpoints").glob("epoch_*.pt"))
    assert checkpoints[-1] == f"epoch_{EPOCHS:04d}.pt"
    for key, value in undisturbed.state_dict.items():
        assert torch.allclose(value, result.state_dict[key], atol=1e-6), f"{key} differs from the undisturbed run"
    assert result.metrics["test_errors"] == undisturbed.metrics["test_errors"]
    ray.kill(actor)
