"""Two processes on one folder, all real: the second ``distill run`` on an output folder is refused in one line that
names the holder, a second trainer of a model folder waits for the first and reuses its model, and a dead holder's
lock is taken over at once. Each writer process records its own file writes (a Python audit hook), so "the refused
or waiting process wrote nothing" is checked, not assumed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ensemble.base.errors import FolderInUse
from ensemble.base.lock import LOCK_FILE, FolderLock

# A run that holds its output folder for a while (Ray starts after the lock is taken) and finishes quickly.
RUN_ARGS = ["--no-progress", "--set", "ensemble.members=1", "--set", "generalist.enabled=false",
            "--set", "specialists.enabled=false", "--set", "student.baseline=false",
            "--set", "student.registered_model=null", "--set", "ensemble.train.epochs=5",
            "--set", "student.train.epochs=2"]

# Logs every file this process opens for writing, renames or removes under WATCHED (argv[2]) to LOG (argv[1]).
AUDIT = """
import json, os, sys, time
_log, _watched = open(sys.argv[1], "a", buffering=1), os.path.realpath(sys.argv[2])
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
def _hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)) and (args[2] or 0) & _WRITE:
        paths = [args[0]]
    elif event in ("os.rename", "os.remove", "os.truncate") and isinstance(args[0], (str, bytes, os.PathLike)):
        paths = [args[0], *[a for a in args[1:2] if isinstance(a, (str, bytes, os.PathLike))]]
    else:
        return
    for path in (os.path.realpath(os.fsdecode(p)) for p in paths):
        if path == _watched or path.startswith(_watched + os.sep):
            _log.write(json.dumps({"t": time.time(), "pid": os.getpid(), "event": event, "path": path}) + "\\n")
sys.addaudithook(_hook)
"""

CLI = AUDIT + "from distill.cli import main\nsys.exit(main(sys.argv[3:]))\n"

# One ensemble member trained in this process through the Python API. "slow" (argv[3]) pauses before each epoch's
# checkpoint, so the first trainer is surely mid-training (about 12 s) when the second one, starting, reaches it.
FIT = AUDIT + """
from functools import partial
import torch
torch.set_num_threads(1)
from ensemble import Ensemble, build_model, load_dataset
from ensemble.base.checkpoint import CheckpointDir
if sys.argv[3:] == ["slow"]:
    save = CheckpointDir.save
    CheckpointDir.save = lambda self, *args: (time.sleep(0.4), save(self, *args))[1]
data = load_dataset("digits", seed=0)
factory = partial(build_model, "mlp", tuple(data.input_shape), data.num_classes, {"hidden": [128, 128]})
ens = Ensemble(factory, n_members=1, train={"epochs": 30, "batch_size": 64}, output_dir=sys.argv[2],
               in_process=True, show_progress=False)
started = time.time()
ens.fit(data.train, data.val)
print(json.dumps({"reused": ens.results_[0].reused, "started": started, "finished": time.time()}))
"""

HOLD = """
import sys, time
from ensemble.base.lock import FolderLock
lock = FolderLock(sys.argv[1], "a test holder").acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _holder(lock_file: Path) -> dict:
    try:
        return json.loads(lock_file.read_text())
    except (OSError, ValueError):
        return {}


def _wait_for_holder(lock_files, proc: subprocess.Popen, seconds: float = 60) -> Path:
    """Until one of ``lock_files()`` names ``proc`` as its holder; that file."""
    deadline = time.time() + seconds
    while True:
        held = [p for p in lock_files() if _holder(p).get("pid") == proc.pid]
        if held:
            return held[0]
        if proc.poll() is not None:
            pytest.fail(f"the first process ended (exit {proc.returncode}) before taking the lock")
        assert time.time() < deadline, "the first process never took the lock"
        time.sleep(0.05)


def _writes(log: Path, pid: int) -> list[dict]:
    lines = log.read_text().splitlines() if log.is_file() else []
    return [entry for entry in map(json.loads, lines) if entry["pid"] == pid]


def _popen(script: str, *args, logs: Path | None = None) -> subprocess.Popen:
    """``script`` in a new interpreter; its output to ``logs``.out/.err when given (a long run's Ray output could
    fill a pipe nobody reads yet), else to pipes."""
    command = [sys.executable, "-c", script, *map(str, args)]
    if logs is None:
        return subprocess.Popen(command, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:  # the child keeps its own copies
        return subprocess.Popen(command, text=True, stdout=out, stderr=err)


def _finish(proc: subprocess.Popen, logs: Path, seconds: float) -> tuple[str, str]:
    """Wait for a process started with ``logs``; its exit code is checked by the caller. Its stdout and stderr."""
    proc.wait(timeout=seconds)
    return Path(f"{logs}.out").read_text(), Path(f"{logs}.err").read_text()


def test_a_second_run_on_the_same_output_dir_is_refused_naming_the_holder(tmp_path):
    out, uri, log = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db", tmp_path / "writes.jsonl"
    cli = ["run", "--output-dir", str(out), "--tracking-uri", uri, *RUN_ARGS]
    first = _popen(CLI, log, out, *cli, logs=tmp_path / "first")
    _wait_for_holder(lambda: [out / LOCK_FILE], first)

    started = time.time()
    second = _popen(CLI, log, out, *cli)
    _, stderr = second.communicate(timeout=60)
    seconds = time.time() - started
    assert first.poll() is None, "the first run ended before the second reached the lock: lengthen RUN_ARGS"

    lines = stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, stderr
    assert "Traceback" not in stderr and lines[0].startswith(f"error: output_dir: {out}")
    assert f"in use by distill run (pid {first.pid} on host {socket.gethostname()}, since " in lines[0]
    assert seconds < 30
    touched = {(w["event"], w["path"]) for w in _writes(log, second.pid)}
    assert touched == {("open", str(out / LOCK_FILE))}, "the refused run only opened the lock file"
    assert _holder(out / LOCK_FILE)["pid"] == first.pid, "and never wrote it"

    _, first_err = _finish(first, tmp_path / "first", 120)
    assert first.returncode == 0, first_err
    results = json.loads((out / "results.json").read_text())
    assert {"ensemble", "student", "mlflow", "summary"} <= set(results)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("distill")
    parents = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert [(r.info.run_id, r.info.status, r.data.tags["pid"]) for r in parents] == [
        (results["mlflow"]["parent_run_id"], "FINISHED", str(first.pid))], "the refused run started no MLflow run"


def test_a_dead_holders_lock_is_taken_over_and_a_live_one_is_waited_for_boundedly(tmp_path):
    child = _popen(HOLD, tmp_path)
    try:
        assert child.stdout.readline().strip() == "locked", child.stderr.read()
        with pytest.raises(FolderInUse, match=f"in use by a test holder \\(pid {child.pid} on host "):
            FolderLock(tmp_path, "the test").acquire()
        started = time.monotonic()
        with pytest.raises(FolderInUse, match="still after 1 s"):
            FolderLock(tmp_path, "the test", wait=1).acquire()
        assert 1 <= time.monotonic() - started < 3
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)

    started = time.monotonic()
    with FolderLock(tmp_path, "the test") as lock:
        assert time.monotonic() - started < 0.5, "no waiting for a dead holder"
        assert _holder(lock.path)["pid"] == os.getpid()
    with FolderLock(tmp_path, "the test"):  # released on exit, kept on disk
        assert (tmp_path / LOCK_FILE).is_file()


def test_a_second_trainer_of_the_same_model_folder_waits_and_reuses_it(tmp_path):
    out, log = tmp_path / "out", tmp_path / "writes.jsonl"
    first = _popen(FIT, log, out, "slow", logs=tmp_path / "first")
    lock_file = _wait_for_holder(lambda: list(out.glob(f"member_0-*/{LOCK_FILE}")), first)
    second = _popen(FIT, log, out, logs=tmp_path / "second")
    outputs = {}
    for name, proc in (("first", first), ("second", second)):
        stdout, stderr = _finish(proc, tmp_path / name, 120)
        assert proc.returncode == 0, stderr
        outputs[name] = json.loads(stdout.strip().splitlines()[-1])

    assert not outputs["first"]["reused"] and outputs["second"]["reused"], "the second waited, then reused it"
    first_writes, second_writes = _writes(log, first.pid), _writes(log, second.pid)
    # The second reached the model's lock while the first was still writing the folder (not after it finished)...
    assert [w["path"] for w in second_writes] == [str(lock_file)], second_writes
    assert second_writes[0]["t"] < max(w["t"] for w in first_writes)
    # ...and wrote nothing into it: every model file there came from the first alone.
    assert {"model.pt", "logits.pt", "result.json"} <= {Path(w["path"]).name for w in first_writes
                                                         if w["event"] == "os.rename"}
