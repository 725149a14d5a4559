"""Security basics: checkpoints never unpickle code, no password reaches MLflow, runs a dead driver left open are
closed by the next run."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from mlflow.tracking import MlflowClient

from ensemble.base.checkpoint import load_verified, save_verified
from ensemble.track.tracking import HOST, Tracker, redact

REPO = Path(__file__).resolve().parents[1]


class Payload:
    """Anything that is not tensors and plain containers: a pickle could run code while loading it."""


def test_a_checkpoint_carrying_a_python_object_is_refused(tmp_path):
    save_verified({"model": {}, "extra": Payload()}, tmp_path / "evil.pt")  # checksum valid on purpose
    assert load_verified(tmp_path / "evil.pt") is None


def test_every_torch_load_in_the_package_is_weights_only():
    calls = []
    for package in ("ensemble", "specialists", "distill"):
        for path in (REPO / package).rglob("*.py"):
            calls += [(path.name, call) for call in re.findall(r"torch\.load\([^)]*\)", path.read_text())]
    assert calls, "the checkpoint loader should be found"
    assert all("weights_only=True" in call for _, call in calls), calls


def test_passwords_in_uris_are_redacted_from_params_and_tags(tmp_path):
    assert redact("postgresql://ml:s3cret@db:5432/mlflow") == "postgresql://ml:***@db:5432/mlflow"
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = tracker.start_run("r", tags={"source": "https://bot:tok123@git.example/repo"})
    tracker.log_params(run_id, {"tracking": {"uri": "http://alice:hunter2@mlflow.internal:5000"}})
    run = MlflowClient(tracker.uri).get_run(run_id)
    assert run.data.params["tracking.uri"] == "http://alice:***@mlflow.internal:5000"
    assert "tok123" not in run.data.tags["source"]


def test_runs_left_running_by_a_dead_driver_are_marked_killed(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db")
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = tracker.start_run("run", tags={"output_dir": "/out", "host": HOST, "pid": str(dead.pid)})
    child = tracker.start_run("member_0", parent_id=orphan)
    other_dir = tracker.start_run("run", tags={"output_dir": "/elsewhere", "host": HOST, "pid": str(dead.pid)})
    with tracker.run("run", tags={"output_dir": "/out"}) as current:
        client = MlflowClient(tracker.uri)
        assert client.get_run(orphan).info.status == "KILLED"
        assert client.get_run(child).info.status == "KILLED"
        assert "gone" in client.get_run(orphan).data.tags["ended_by"]
        assert client.get_run(other_dir).info.status == "RUNNING", "only runs of the same output folder"
        assert client.get_run(current).data.tags["pid"] != str(dead.pid)
