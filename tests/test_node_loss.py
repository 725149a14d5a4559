"""A worker node lost mid-training, with Ray's default health checks (which declare a node dead only after tens of
seconds, long after the calls to its actors have failed): the model starts again on a node that is alive and
resumes from its newest checkpoint, within ``ray.max_restarts``; once they are used up the run fails in one line,
exit 2, its MLflow runs FAILED. Where each model trained is recorded in its ``result.json``, its ``results.json``
row, its MLflow run and the summary table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray.util.state import list_actors
from rich.console import Console

from distill.report import _row, print_ensemble_summary
from distill.results import Results
from ensemble.api import Ensemble
from ensemble.base.errors import ConfigError, DistillError, NodeLost
from ensemble.cluster.restarts import check_max_restarts, is_lost
from ensemble.results import EnsembleSection, ModelRow, Placement
from ensemble.stage import model_row
from ensemble.track.model_runs import placement_tags
from ensemble.training.trainer import Trainer, TrainResult, TrainSpec

from helpers import quick_train, small_mlp_factory, worker_cluster

EPOCHS = 12


@pytest.fixture
def cluster():
    """A head with no CPUs and two 1-CPU worker nodes, with Ray's own failure detection (no ``_system_config``)."""
    with worker_cluster(2) as made:
        yield made


def _remove_the_training_node(cluster, workers, out: Path, alive) -> object:
    """Once the member's epoch-2 checkpoint is written, remove the node its actor runs on, as a crash would."""
    deadline = time.time() + 120
    while not [p for p in out.glob("**/checkpoints/epoch_*.pt") if int(p.stem.split("_")[1]) >= 2]:
        assert alive() and time.time() < deadline, "training never reached epoch 2"
        time.sleep(0.05)
    # This cluster's address: with none, the state API picks the newest Ray on the machine, maybe another's.
    (actor,) = list_actors(address=cluster.address, filters=[("class_name", "=", "TrainerActor"),
                                                             ("state", "=", "ALIVE")], timeout=10)
    victim = next(w for w in workers if w.node_id == actor.node_id)
    cluster.remove_node(victim, allow_graceful=False)
    return victim


def test_a_lost_node_restarts_the_member_elsewhere_with_default_health_checks(cluster, digits, tmp_path):
    nodes, workers = cluster
    out, uri = tmp_path / "storage", f"sqlite:///{tmp_path}/mlflow.db"
    ensemble = Ensemble(small_mlp_factory(digits.input_shape, digits.num_classes, (256, 256)), n_members=1,
                        train=quick_train(EPOCHS), seed=0, output_dir=out, num_cpus=1, show_progress=False,
                        tracking_uri=uri, experiment="node-loss")
    outcome: dict = {}

    def fit():
        started = time.monotonic()
        try:
            outcome["ensemble"] = ensemble.fit(digits.train, digits.val, digits.test)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = err
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    victim = _remove_the_training_node(nodes, workers, out, thread.is_alive)
    thread.join(timeout=150)
    assert not thread.is_alive(), "training did not complete after the node was removed"
    assert "error" not in outcome, repr(outcome.get("error"))
    print(f"node-loss fit: {outcome['seconds']:.1f} s")

    result = outcome["ensemble"].results_[0]
    survivor = next(w for w in workers if w is not victim)
    assert result.placement["node_id"] == survivor.node_id != victim.node_id
    assert result.placement["restarts"] >= 1
    assert result.resumed_from_epoch >= 2, "resumed from its checkpoint, not from scratch"
    assert [r["epoch"] for r in result.history] == list(range(1, EPOCHS + 1))
    (written,) = out.glob("member_0-*/result.json")
    recorded = json.loads(written.read_text())["placement"]
    assert recorded["node_id"] == survivor.node_id and recorded["restarts"] == result.placement["restarts"]

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("node-loss")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["Ensemble", "member_0"]
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    (member,) = [r for r in runs if r.info.run_name == "member_0"]
    assert member.data.tags["placement.node_id"] == survivor.node_id
    assert int(member.data.tags["placement.restarts"]) == result.placement["restarts"]


def _start_cli(out: Path, uri: str, address: str, restarts: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = ["ensemble", "--output-dir", str(out), "--tracking-uri", uri, "--no-progress",
            "--set", f"ray.address={address}", "--set", f"ray.max_restarts={restarts}",
            "--set", "ensemble.members=1", "--set", f"ensemble.train.epochs={EPOCHS}",
            "--set", "ensemble.model.params.hidden=[256,256]", "--set", "generalist.enabled=false"]
    # Its own session, so everything it starts can be stopped by group id if it hangs.
    return subprocess.Popen([sys.executable, "-m", "distill.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)


def test_restarts_used_up_fail_in_one_line_exit_2_and_runs_failed(cluster, tmp_path):
    nodes, workers = cluster
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    proc = _start_cli(out, uri, nodes.address, restarts=0)
    try:
        victim = _remove_the_training_node(nodes, workers, out, lambda: proc.poll() is None)
        _, stderr = proc.communicate(timeout=90)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert "member_0" in errors[0] and f"node {victim.node_id[:8]}" in errors[0], errors[0]
    assert "ray.max_restarts=0" in errors[0] and "rerun" in errors[0], errors[0]

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("distill").experiment_id])
    assert {r.info.run_name: r.info.status for r in runs if r.info.run_name == "member_0"} == {"member_0": "FAILED"}
    assert runs and all(r.info.status == "FAILED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]


# --- without a cluster: what is recorded, and which errors count as a loss ---


def test_placement_reaches_result_json_the_row_the_tags_and_the_table(digits, tmp_path):
    spec = TrainSpec("member_0", "member", small_mlp_factory(digits.input_shape, digits.num_classes), quick_train(1))
    splits = {"train": digits.train, "val": digits.val, "test": digits.test}
    trainer = Trainer(spec, splits, tmp_path, "fp")
    trainer.placement = {"node_id": "3f2a9c1d" + "0" * 48, "node_ip": "10.0.0.5", "gpu_ids": ["1"], "restarts": 2}
    trained = trainer.fit()
    reused = Trainer(spec, splits, tmp_path, "fp").fit()
    assert reused.reused and reused.placement == trained.placement == trainer.placement, "read back from result.json"

    row = model_row(reused, "run-1", digits.test.y)
    assert ModelRow.model_validate_json(row.model_dump_json()) == row
    assert row.placement == Placement(node_id="3f2a9c1d" + "0" * 48, node_ip="10.0.0.5", gpu_ids=["1"], restarts=2)
    assert row.placement.label == "10.0.0.5 (3f2a9c1d) GPU 1, 2 restarts"
    assert _row("member_0", row, params=1).node == row.placement.label
    assert placement_tags(reused.placement) == {"placement.node_id": "3f2a9c1d" + "0" * 48,
                                                "placement.node_ip": "10.0.0.5", "placement.gpu_ids": "1",
                                                "placement.restarts": 2}
    in_process = TrainResult("m", "member", {}, {"test": torch.zeros(2, 3)}, [], {})
    assert Placement.of(in_process.placement) is None and placement_tags(in_process.placement) == {}

    scores = {f"test_{k}_{mean}": 0.5 if k == "accuracy" else 1 for k in ("accuracy", "errors")
              for mean in ("arithmetic", "geometric")}
    section = EnsembleSection(members=[row], mean="arithmetic", test_accuracy=0.5, test_errors=1, **scores)
    console = Console(width=200, record=True)
    print_ensemble_summary(Results(ensemble=section), console)
    assert "10.0.0.5 (3f2a9c1d) GPU 1, 2 restarts" in console.export_text()


def test_only_a_lost_actor_or_node_counts_as_a_loss_and_max_restarts_is_checked():
    assert is_lost(ray.exceptions.ActorUnavailableError("failed to connect to all addresses", None))
    assert is_lost(ray.exceptions.ActorDiedError()) and is_lost(ray.exceptions.NodeDiedError("gone"))
    assert not is_lost(ray.exceptions.RayTaskError("fit", "Traceback ...", NodeLost("a user error")))
    assert not is_lost(ValueError("not Ray's"))
    assert issubclass(NodeLost, DistillError), "one line and exit 2 from the CLI"
    assert check_max_restarts(0) == 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ConfigError, match=r"ray.max_restarts: expected an integer >= 0"):
            check_max_restarts(bad)
