"""The driver killed in the specialist and student stages (SIGTERM, then SIGKILL): the runs end KILLED (SIGTERM at
once; SIGKILL when the next run finds the driver gone), and rerunning the same command skips what finished,
resumes what was cut off and completes. The ensemble stage's SIGTERM case is in test_cli.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

# A 256x256 generalist makes each specialist / student epoch long enough to be interrupted mid-stage.
ARGS = ["--no-progress", "--set", "ensemble.members=1", "--set", "ensemble.train.epochs=1",
        "--set", "generalist.model={name: mlp, params: {hidden: [256, 256]}}", "--set", "generalist.train.epochs=2",
        "--set", "specialists.enabled=true", "--set", "specialists.count=2", "--set", "specialists.train.epochs=12",
        "--set", "student.model.params.hidden=[256,256]", "--set", "student.train.epochs=12",
        "--set", "student.baseline=false", "--set", "student.registered_model=null"]


def _start(out: Path, uri: str) -> subprocess.Popen:
    # Its own session, so the whole process tree it starts (Ray included) can be stopped by group id.
    return subprocess.Popen([sys.executable, "-m", "distill.cli", "run", "--output-dir", str(out), "--tracking-uri",
                             uri, *ARGS], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _kill_at(proc: subprocess.Popen, out: Path, stage: str, sig: int) -> None:
    deadline = time.time() + 240
    while not list(out.glob(f"{stage}/*/checkpoints/epoch_0002.pt")):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {stage} epoch 2: {proc.stderr.read()}")
        assert time.time() < deadline, f"{stage} never reached epoch 2"
        time.sleep(0.05)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, by process group
        proc.wait(timeout=60)
    else:
        proc.send_signal(sig)
        assert proc.wait(timeout=90) == 130
        os.killpg(proc.pid, signal.SIGKILL) if _group_alive(proc.pid) else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _parents(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("distill")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return client, [r for r in runs if "mlflow.parentRunId" not in r.data.tags], runs


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_driver_killed_in_the_specialist_then_the_student_stage_loses_nothing(sig, tmp_path):
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    _kill_at(_start(out, uri), out, "specialists", sig)
    _kill_at(_start(out, uri), out, "student", sig)
    final = _start(out, uri)
    assert final.wait(timeout=300) == 0, final.stderr.read()

    client, parents, runs = _parents(uri)
    assert [p.info.status for p in parents] == ["KILLED", "KILLED", "FINISHED"], (
        "SIGTERM ends the run at once; after SIGKILL the next run finds the driver gone and ends it")
    assert not [r for r in runs if r.info.status == "RUNNING"], "no nested run is left RUNNING either"
    if sig == signal.SIGKILL:
        assert all("gone" in p.data.tags.get("ended_by", "") for p in parents[:2])

    results = json.loads((out / "results.json").read_text())
    assert results["ensemble"]["members"][0]["reused"] and results["generalist"]["reused"]
    assert all(m["reused"] for m in results["specialists"]["members"]), "finished in the second run, reused"
    student = results["student"]
    if sig == signal.SIGTERM:
        assert student["resumed_from_epoch"] >= 2, "the student resumed from its checkpoint"
    else:
        # Ray's workers live in their own process groups: a SIGKILLed driver's actor may still finish its model
        # (atomic writes) before it notices the raylet is gone. Either way nothing is trained twice from scratch.
        assert student["reused"] or student["resumed_from_epoch"] >= 2
    assert results["student"]["epochs_trained"] == 12
