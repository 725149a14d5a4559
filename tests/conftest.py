"""Shared fixtures: a real local Ray (2 CPUs), real MLflow SQLite stores in temp dirs, real data."""

from __future__ import annotations

import os
from pathlib import Path

# Token authentication stays on (Ray's default); clients of a `ray start` head need this set before Ray is
# imported, or they send no token and the dashboard answers 401.
os.environ.setdefault("RAY_AUTH_MODE", "token")

import pytest  # noqa: E402
import ray  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_num_threads(1)


def start_ray(num_cpus: int = 2, num_gpus: int | None = None) -> None:
    """(Re)start a local Ray with exactly these logical resources."""
    if ray.is_initialized():
        have = ray.cluster_resources()
        if have.get("CPU") == num_cpus and have.get("GPU", 0) == (num_gpus or 0):
            return
        ray.shutdown()
    # "local": never join a cluster some earlier `ray start` recorded in the temp folder (it may be dead).
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)


@pytest.fixture(scope="module")
def ray_cpu():
    start_ray(num_cpus=2)
    yield


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture(scope="session")
def digits():
    from ensemble.data import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def mnist_root() -> str:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_DATA}")
    return str(SHARED_DATA)


def small_mlp_factory(input_shape, num_classes, hidden=(32,)):
    from ensemble.models import RegisteredModel

    return RegisteredModel("mlp", tuple(input_shape), num_classes, {"hidden": list(hidden)})


def quick_train(epochs: int = 3, **overrides):
    from ensemble.config import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=64, **overrides)
