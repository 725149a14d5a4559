"""Plain helpers shared by the test files: a local Ray, small models and train configs, the ``distill`` CLI.

Test files import these from here, never from ``conftest`` or from another test file.
"""

from __future__ import annotations

import subprocess
from contextlib import contextmanager
import sys
from pathlib import Path


def start_ray(num_cpus: int = 2, num_gpus: int | None = None) -> None:
    """(Re)start a local Ray with exactly these logical resources."""
    import ray  # imported late: conftest sets RAY_AUTH_MODE before Ray is first imported

    if ray.is_initialized():
        have = ray.cluster_resources()
        if have.get("CPU") == num_cpus and have.get("GPU", 0) == (num_gpus or 0):
            return
        ray.shutdown()
    # "local": never join a cluster some earlier `ray start` recorded in the temp folder (it may be dead).
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)


def small_mlp_factory(input_shape, num_classes, hidden=(32,)):
    from ensemble.models.registry import RegisteredModel

    return RegisteredModel("mlp", tuple(input_shape), num_classes, {"hidden": list(hidden)})


def quick_train(epochs: int = 3, **overrides):
    from ensemble.schema.sections import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=64, **overrides)


def distill(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """``python -m distill.cli ARGS`` in a real process, output captured."""
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def runs_of(uri: str, experiment: str = "distill"):
    """The client and the experiment's runs, oldest first."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


@contextmanager
def worker_cluster(workers: int = 2, system_config: dict | None = None, node_env: list[dict] | None = None):
    """``ray.cluster_utils.Cluster``: a head with no CPUs (so every actor lands on a worker) and ``workers`` 1-CPU
    worker nodes, joined by this process; yields (cluster, worker nodes). ``system_config`` None keeps Ray's own
    failure detection; ``node_env[i]`` is worker i's environment variables (as another machine's would differ)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    head = {"num_cpus": 0, **({"_system_config": system_config} if system_config else {})}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    nodes = [cluster.add_node(num_cpus=1, **({"env_vars": node_env[i]} if node_env else {})) for i in range(workers)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()
        # cluster_utils records its address here; left behind, a later ray.init(num_cpus=...) would try to join it.
        Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)
