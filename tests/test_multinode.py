"""Several Ray nodes in one process tree (``ray.cluster_utils.Cluster``): members spread across nodes, outputs go
to the configured storage path, and a node removed mid-training hands its work to the nodes that remain."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from ray.util.state import list_actors

from ensemble.api import Ensemble

from helpers import quick_train, small_mlp_factory, worker_cluster

# Node death is noticed after a few missed health checks; the defaults (several seconds each) make tests slow.
FAST_FAILURE_DETECTION = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                          "health_check_failure_threshold": 3}


@pytest.fixture
def cluster():
    with worker_cluster(2, FAST_FAILURE_DETECTION) as made:
        yield made


def _ensemble(digits, out: Path, members: int, epochs: int, hidden=(32,)) -> Ensemble:
    return Ensemble(small_mlp_factory(digits.input_shape, digits.num_classes, hidden), n_members=members,
                    train=quick_train(epochs), seed=0, output_dir=out, num_cpus=1, show_progress=False)


def test_members_spread_across_nodes_and_write_to_the_storage_path(cluster, digits, tmp_path):
    _, workers = cluster
    storage = tmp_path / "shared-storage"
    ensemble = _ensemble(digits, storage, members=2, epochs=2).fit(digits.train, digits.val, digits.test)
    nodes = {r.placement["node_id"] for r in ensemble.results_}
    assert nodes == {w.node_id for w in workers}, "one member per 1-CPU node"
    for result in ensemble.results_:
        folder = next(storage.glob(f"{result.name}-*"))
        assert (folder / "model.pt").is_file() and list(folder.glob("checkpoints/epoch_*.pt"))


def test_a_node_removed_mid_training_hands_the_member_to_another_node(cluster, digits, tmp_path):
    nodes, workers = cluster
    out = tmp_path / "storage"
    ensemble = _ensemble(digits, out, members=1, epochs=12, hidden=(256, 256))
    outcome: dict = {}

    def fit():
        try:
            outcome["ensemble"] = ensemble.fit(digits.train, digits.val, digits.test)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = err

    thread = threading.Thread(target=fit, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not [p for p in out.glob("**/checkpoints/epoch_*.pt") if int(p.stem.split("_")[1]) >= 2]:
        assert thread.is_alive() and time.time() < deadline, f"training never reached epoch 2: {outcome}"
        time.sleep(0.05)
    alive = list_actors(filters=[("class_name", "=", "TrainerActor"), ("state", "=", "ALIVE")], timeout=10)
    assert len(alive) == 1
    victim = next(w for w in workers if w.node_id == alive[0].node_id)
    nodes.remove_node(victim, allow_graceful=False)

    thread.join(timeout=240)
    assert not thread.is_alive(), "training did not complete after the node was removed"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["ensemble"].results_[0]
    survivor = next(w for w in workers if w is not victim)
    assert result.placement["node_id"] == survivor.node_id
    assert result.resumed_from_epoch >= 2, "resumed from the checkpoint on the storage path"
    assert result.metrics["epochs_trained"] == 12
