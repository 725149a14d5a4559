"""A local output folder on a Ray cluster whose nodes do not share it is refused before anything trains.

A relative ``--output-dir`` of a job submitted with ``--working-dir`` resolves in each node's own copy of that
working directory: without the check the models train into a folder of the worker node's that the driver never
reads (a rerun finds nothing). The nodes here are on one machine, each with its own temp folder, so each has its
own copy, as on separate machines."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import ensemble
from ensemble.base.errors import ConfigError

from helpers import runs_of, start_ray
from servers import ray_head, ray_worker, wait_for_job_agent

# The packages the job runs: a copy of those this test imports, so a job tests this checkout's code.
SOURCE = Path(ensemble.__file__).resolve().parents[1]
QUICK = ["--no-progress", "--set", "ensemble.members=2", "--set", "ensemble.train.epochs=1"]


@pytest.fixture
def two_nodes():
    """A 0-CPU head and one 1-CPU worker node from `ray start`, each with its own temp folder."""
    if ray.is_initialized():
        ray.shutdown()  # this test process is only a client of the cluster
    head_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    with ray_head(num_cpus=0, temp_dir=head_dir) as (address, dashboard), ray_worker(address, num_cpus=1) as node_dir:
        wait_for_job_agent(dashboard)
        yield dashboard, Path(head_dir), Path(node_dir)


def _project(root: Path) -> Path:
    project = root / "project"
    for package in ("ensemble", "specialists", "distill"):
        shutil.copytree(SOURCE / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    return project


def _worker_node(dashboard: str) -> tuple[str, str]:
    """(id, IP) of the node with CPUs, as the head knows it (Ray reports a loopback node by the machine's IP)."""
    from ray.util.state import list_nodes

    nodes = [n for n in list_nodes(address=dashboard, timeout=20) if n.state == "ALIVE"]
    (worker,) = [n for n in nodes if n.resources_total.get("CPU", 0) >= 1]
    return worker.node_id, worker.node_ip


def _written_models(folder: Path) -> list[Path]:
    return [*folder.rglob("checkpoints"), *folder.rglob("model.pt"), *folder.rglob("result.json")]


# A real `ray start` head and worker and a submitted job: about 80 s here. The mechanism is tested in CI on
# ray.cluster_utils below (a node whose working-directory copy differs); this runs it end to end.
@pytest.mark.slow
def test_a_job_with_a_relative_output_dir_is_refused_naming_the_node(two_nodes, tmp_path, monkeypatch):
    dashboard, head_dir, node_dir = two_nodes
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the head answers 401 without the token of ~/.ray/auth_token
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", dashboard,
         "--working-dir", str(_project(tmp_path)), "--", "python", "-m", "distill.cli", "ensemble",
         "--output-dir", "runs/x", "--tracking-uri", uri, *QUICK],
        capture_output=True, text=True, timeout=150,
    )
    logs = done.stdout + done.stderr
    assert done.returncode != 0, logs[-3000:]
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert errors, logs[-3000:]
    worker, ip = _worker_node(dashboard)
    assert errors[-1].startswith(f"error: output_dir runs/x/ensemble: node {worker[:8]} ({ip}) cannot see"), errors
    assert f"its own {node_dir}/session_" in errors[-1], "where the relative path lands on that node"
    assert "--output-dir s3://bucket/path" in errors[-1] and "shared NFS path" in errors[-1]
    assert "Traceback" not in logs, logs[-3000:]
    # Nothing trained: no model folder on the worker node (where the actors would have written) nor on the head.
    assert _written_models(node_dir) == [] and _written_models(head_dir) == []
    assert not list(head_dir.rglob("runs/x/ensemble")), "the check's marker folder is left behind"
    _, runs = runs_of(uri)  # the parent run alone: no model's run was started
    assert [(r.info.run_name, r.info.status) for r in runs] == [("config: ensemble", "FAILED")]


@ray.remote(num_cpus=0)
def _cwd() -> str:
    import os

    return os.getcwd()


@pytest.fixture
def cluster_with_own_copies(tmp_path):
    """``ray.cluster_utils.Cluster``: a head and a worker node, each with its own temp folder, joined by a driver
    whose job ships a working directory (each node unpacks its own copy, where actors resolve relative paths)."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    temps = [tempfile.mkdtemp(prefix="raycl-", dir="/tmp") for _ in range(2)]
    # No dashboard: its fixed port may be another Ray's on this machine.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temps[0],
                                                            "include_dashboard": False})
    try:
        worker = cluster.add_node(num_cpus=1, temp_dir=temps[1])
        cluster.wait_for_nodes()
        project = tmp_path / "project"
        project.mkdir()
        (project / "README").write_text("a job's working directory\n")
        ray.init(address=cluster.address, runtime_env={"working_dir": str(project)}, log_to_driver=False)
        yield ray.get_runtime_context().get_node_id(), worker.node_id
    finally:
        ray.shutdown()
        cluster.shutdown()
        for temp in temps:
            shutil.rmtree(temp, ignore_errors=True)


def test_a_node_that_sees_the_folder_passes_and_one_that_does_not_is_refused(cluster_with_own_copies, tmp_path,
                                                                               monkeypatch, caplog):
    from ensemble.cluster import visibility

    head, worker = cluster_with_own_copies
    # The driver in the head node's copy of the working directory, as a submitted job's driver is: there "runs/x"
    # is the head's actors' folder too, and not the worker node's.
    head_copy = Path(ray.get(_cwd.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False))
                             .remote()))
    worker_copy = Path(ray.get(_cwd.options(scheduling_strategy=NodeAffinitySchedulingStrategy(worker, soft=False))
                               .remote()))
    assert head_copy != worker_copy and head_copy.name == worker_copy.name  # one working directory, two copies
    monkeypatch.chdir(head_copy)

    with pytest.raises(ConfigError) as refused:
        visibility.check_shared_output("runs/x", "runs/x", num_cpus=1, num_gpus=0)
    line = str(refused.value)
    assert line.startswith(f"output_dir runs/x: node {worker[:8]} (") and "\n" not in line, line
    assert head[:8] not in line and "more node" not in line, "only the node that cannot see it is named"
    assert f"its own {worker_copy / 'runs' / 'x'}" in line and "relative path" in line
    assert not (head_copy / "runs").exists(), "the marker and the folders made for it are removed"

    shared = tmp_path / "shared"  # an absolute path: one folder for both nodes on this one machine
    visibility.check_shared_output(shared, shared, num_cpus=1, num_gpus=0)
    assert not shared.exists()

    # A node that does not answer in time is named in a warning, not refused: it has not shown it cannot see.
    with caplog.at_level(logging.WARNING, logger=visibility.__name__):
        visibility.check_shared_output("runs/late", "runs/late", num_cpus=1, num_gpus=0, seconds=0)
    assert f"node {worker[:8]} (" in caplog.text and "no answer within 0 s" in caplog.text, caplog.text
    assert not (head_copy / "runs").exists()

    def asked(*args):
        raise AssertionError("nodes that were seen to share the folder are asked again")

    monkeypatch.setattr(visibility, "_ask", asked)
    visibility.check_shared_output(shared, shared, num_cpus=1, num_gpus=0)  # checked once per process
    with pytest.raises(AssertionError, match="asked again"):  # a node refused before is asked again
        visibility.check_shared_output("runs/x", "runs/x", num_cpus=1, num_gpus=0)


def test_a_local_ray_is_not_checked(tmp_path, monkeypatch):
    """One node, the driver's own: its actors share the driver's disk, and no task is spent on asking."""
    from ensemble.cluster import visibility

    def asked(*args):
        raise AssertionError("a local Ray's only node was asked")

    monkeypatch.setattr(visibility, "_ask", asked)
    start_ray(num_cpus=1)
    try:
        visibility.check_shared_output(tmp_path / "out", "nowhere/relative", num_cpus=1, num_gpus=0)
    finally:
        ray.shutdown()
    assert not (tmp_path / "out").exists()
