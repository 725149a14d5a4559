"""Which Ray a run uses: a head killed without ``ray stop`` leaves its address recorded in Ray's temp folder, and
``ray.init()`` with no address would join that dead cluster and retry for many minutes. ``distill`` must start a
local Ray instead, and ``ray.address: auto`` must say in one line that the recorded cluster is gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from servers import _pids_mentioning, free_port, run_distill

TINY_RUN = ["--no-progress", "--set", "ensemble.members=1", "--set", "ensemble.train.epochs=1",
            "--set", "generalist.enabled=false", "--set", "specialists.enabled=false",
            "--set", "student.train.epochs=1", "--set", "student.baseline=false",
            "--set", "student.registered_model=null"]


@pytest.fixture
def dead_head_record():
    """A real ``ray start --head`` on loopback, SIGKILLed by process id: its ``ray_current_cluster`` stays behind.

    ``RAY_TMPDIR`` (short: Ray's Unix sockets live under it) keeps this record away from the machine's own Ray."""
    ray_tmp = tempfile.mkdtemp(prefix="rs-", dir="/tmp")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "RAY_TMPDIR": ray_tmp}
    port = free_port()
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--num-cpus", "1", "--include-dashboard", "false",
         "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
         "--ray-client-server-port", str(free_port())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    record = Path(ray_tmp) / "ray" / "ray_current_cluster"
    try:
        deadline = time.time() + 90
        while not record.is_file():
            assert head.poll() is None, f"ray start exited with {head.returncode}"
            assert time.time() < deadline, "ray start wrote no ray_current_cluster"
            time.sleep(0.5)
        # Killed as a crash would kill it: no `ray stop`, so nothing removes the record.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        for pid in _pids_mentioning(ray_tmp):
            os.kill(pid, signal.SIGKILL)
        assert record.read_text().strip().endswith(f":{port}")
        yield env, record.read_text().strip()
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
        for pid in _pids_mentioning(ray_tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_run_ignores_a_dead_recorded_cluster_and_auto_names_it(dead_head_record, tmp_path):
    env, dead_address = dead_head_record
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    # `distill ensemble`: every stage connects to Ray the same way, and the ensemble stage is the one that needs it.
    done, _ = run_distill(["ensemble", "--output-dir", str(tmp_path / "out"), "--tracking-uri", uri, *TINY_RUN], 120,
                          env)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert 0 < results["ensemble"]["test_accuracy"] <= 1

    auto, seconds = run_distill(["ensemble", "--output-dir", str(tmp_path / "auto"), "--tracking-uri", uri,
                                 "--set", "ray.address=auto", *TINY_RUN], 30, env)
    err = auto.stderr.strip().splitlines()
    assert auto.returncode == 2 and len(err) == 1, err
    assert f"no Ray cluster answers at {dead_address}" in err[0] and "ray stop" in err[0], err[0]
    assert seconds < 30
