"""The driver killed in each stage, SIGTERM then SIGKILL: the runs end KILLED (SIGTERM at once; SIGKILL when the
next run finds the driver gone), and rerunning the same command skips what finished, resumes what was cut off
and completes."""

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

# A 128x128 generalist makes each generalist / specialist / student epoch long enough to be interrupted mid-stage.
ARGS = ["--no-progress", "--set", "ensemble.members=1", "--set", "ensemble.train.epochs=1",
        "--set", "generalist.model={name: mlp, params: {hidden: [128, 128]}}", "--set", "generalist.train.epochs=12",
        "--set", "specialists.enabled=true", "--set", "specialists.count=2", "--set", "specialists.train.epochs=12",
        "--set", "student.model.params.hidden=[128,128]", "--set", "student.train.epochs=12",
        "--set", "student.baseline=false", "--set", "student.registered_model=null"]

# Where each run is cut: SIGTERM, then SIGKILL, in every stage, once the run has trained an epoch of it.
EVERY_KILL = [("ensemble/generalist-*", signal.SIGTERM), ("ensemble/generalist-*", signal.SIGKILL),
              ("specialists/*", signal.SIGTERM), ("specialists/*", signal.SIGKILL),
              ("student/student-*", signal.SIGTERM), ("student/student-*", signal.SIGKILL)]
# Each stage once and each signal at least once: half the driver starts (about 25 s each on 2 cores) for CI.
EACH_STAGE = [EVERY_KILL[0], EVERY_KILL[3], EVERY_KILL[5]]


def _latest_epoch(out: Path, models: str) -> int:
    return max((int(p.stem.split("_")[1]) for p in out.glob(f"{models}/checkpoints/epoch_*.pt")), default=0)


def _quiet(out: Path, seconds: float = 1.0) -> None:
    """Until no checkpoint has been written for ``seconds``: a killed run's actor may finish its current epoch."""
    def snapshot():
        return sorted((str(p), p.stat().st_mtime) for p in out.glob("**/checkpoints/*.pt") if p.exists())

    last, since = snapshot(), time.time()
    while time.time() - since < seconds:
        time.sleep(0.2)
        now = snapshot()
        if now != last:
            last, since = now, time.time()


def _start(out: Path, uri: str) -> subprocess.Popen:
    # Its own session, so the whole process tree it starts (Ray included) can be stopped by group id.
    return subprocess.Popen([sys.executable, "-m", "distill.cli", "run", "--output-dir", str(out), "--tracking-uri",
                             uri, *ARGS], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _kill_after_an_epoch(out: Path, uri: str, models: str, sig: int) -> int:
    """Start the run, wait until it has written a new checkpoint of ``models``, then send ``sig``; its pid."""
    _quiet(out)
    before = _latest_epoch(out, models)
    proc = _start(out, uri)
    deadline = time.time() + 240
    while _latest_epoch(out, models) <= before:
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before training {models}: {proc.stderr.read()}")
        assert time.time() < deadline, f"{models} never trained"
        time.sleep(0.02)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started, by process group
        proc.wait(timeout=60)
    else:
        proc.send_signal(sig)
        assert proc.wait(timeout=90) == 130, proc.stderr.read()
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    return proc.pid


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_driver_killed_in_each_stage_loses_nothing(tmp_path):
    _kill_each_then_rerun(tmp_path, EACH_STAGE)


@pytest.mark.slow
def test_driver_killed_by_each_signal_in_every_stage_loses_nothing(tmp_path):
    _kill_each_then_rerun(tmp_path, EVERY_KILL)


def _kill_each_then_rerun(tmp_path: Path, kills: list[tuple[str, int]]) -> None:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    pids = [_kill_after_an_epoch(out, uri, models, sig) for models, sig in kills]
    _quiet(out)
    final = _start(out, uri)
    assert final.wait(timeout=300) == 0, final.stderr.read()

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("distill")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    seen = [(p.info.status, p.data.tags.get("pid"), p.data.tags.get("ended_by")) for p in parents]
    assert [p.info.status for p in parents] == ["KILLED"] * len(kills) + ["FINISHED"], (
        f"SIGTERM ends the run at once; after SIGKILL the next run finds the driver gone and ends it: {seen}, "
        f"drivers {pids}")
    for parent, (_, sig) in zip(parents, kills):
        assert ("gone" in parent.data.tags.get("ended_by", "")) == (sig == signal.SIGKILL)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], "no nested run is left RUNNING"

    results = json.loads((out / "results.json").read_text())
    assert results["ensemble"]["members"][0]["reused"] and results["generalist"]["reused"]
    assert all(m["reused"] for m in results["specialists"]["members"]), "finished by an earlier run, reused"
    student = results["student"]
    # Each run cut in the student stage trained at least one more epoch of it, and a SIGKILLed driver's actor finishes
    # at most its current epoch (it notices its raylet is gone): the student resumes from the last checkpoint any
    # run wrote; nothing restarts from scratch.
    student_cuts = sum(models.startswith("student/") for models, _ in kills)
    assert student["reused"] or student["resumed_from_epoch"] >= student_cuts
    assert student["epochs_trained"] == 12
