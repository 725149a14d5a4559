"""Shared fixtures: a real local Ray (2 CPUs), real MLflow SQLite stores in temp dirs, real data."""

from __future__ import annotations

import os
from pathlib import Path

# Token authentication stays on (Ray's default); clients of a `ray start` head need this set before Ray is
# imported, or they send no token and the dashboard answers 401.
os.environ.setdefault("RAY_AUTH_MODE", "token")

import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import start_ray  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run the tests marked slow (minutes each; not in CI)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_cpu():
    start_ray(num_cpus=2)
    yield


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


@pytest.fixture(scope="session")
def digits():
    from ensemble.data.registry import load_dataset

    return load_dataset("digits", seed=0)


@pytest.fixture(scope="session")
def mnist_root() -> str:
    if not (SHARED_DATA / "MNIST" / "raw").is_dir():
        pytest.skip(f"real MNIST not found at {SHARED_DATA}")
    return str(SHARED_DATA)
