"""``resources.workers_per_model: n``: one model trained by n data-parallel workers with Ray Train's TorchTrainer.

Each worker runs the same :class:`~ensemble.training.trainer.Trainer` with ``shard=(rank, n)``: every worker draws
the same epoch order and augments each global batch alike (their generators stay in step), then takes rows
``rank::n`` of it; DistributedDataParallel averages the workers' gradients (gloo on CPUs, NCCL on GPUs), so a
step is the step of
the global batch (``train.batch_size``) up to the last batch's uneven split. Rank 0 alone writes the model's folder:
the same checkpoints, ``result.json``, ``model.pt`` and logits as any other model, so resume, reuse and the MLflow
run work unchanged; a rerun after a kill resumes every worker from rank 0's newest checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray
import torch

from ensemble.base.errors import ResourceError
from ensemble.data.registry import from_numpy
from ensemble.training.trainer import Trainer, TrainResult, epoch_metrics


def check_workers_fit(name: str, workers: int, num_cpus: float, num_gpus: float) -> None:
    """One line when the whole cluster cannot host ``workers`` workers of this size (Ray Train would wait)."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    cpus, gpus = sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes)

    def slots(node: dict) -> int:
        by_cpu = int(node.get("CPU", 0) // num_cpus)
        return min(by_cpu, int(node.get("GPU", 0) // num_gpus)) if num_gpus else by_cpu

    if sum(slots(node) for node in nodes) < workers:
        raise ResourceError(
            f"{name}: resources.workers_per_model={workers} workers of num_cpus={num_cpus:g}, num_gpus={num_gpus:g} "
            f"need {workers * num_cpus:g} CPUs and {workers * num_gpus:g} GPUs; the Ray cluster has CPU={cpus:g}, "
            f"GPU={gpus:g}")


def _worker_loop(config: dict) -> None:
    """One worker of the group: its rank's shard of every batch; rank 0 logs the epochs and writes the files."""
    import ray.train
    import ray.train.torch


    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config["num_cpus"])))
    splits = {name: from_numpy(arrays) for name, arrays in ray.get(config["data"]).items()}
    sink = config["sink"] if rank == 0 else None
    raylet = os.getppid()

    def on_epoch(record: dict) -> None:
        if os.getppid() != raylet:
            # The local Ray that started this worker died with its driver (SIGKILL): stop at this epoch boundary,
            # its checkpoint saved, rather than train on beside the rerun that resumes from it (as TrainerActor).
            os._exit(1)
        if sink is not None:
            sink(epoch_metrics(record), step=record["epoch"])

    device = ray.train.torch.get_device()
    trainer = Trainer(config["spec"], splits, Path(config["workdir"]), config["fingerprint"], device,
                      shard=(rank, world))
    trainer.placement = {"node_id": ray.get_runtime_context().get_node_id(), "node_ip": ray.util.get_node_ip_address(),
                         "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": str(device)}  # rank 0's
    trainer.fit(on_epoch)


@ray.remote(num_cpus=0)
def fit_data_parallel(job, data: list, storage: str) -> TrainResult:
    """Train ``job`` (a :class:`ensemble.cluster.runner.TrainJob`) with ``job.resources.workers`` Ray Train workers; the
    result is read back from the folder rank 0 wrote. Runs as a task, so other models train beside it. ``data``
    is ``[ref]``: inside a list the object ref reaches the workers unresolved, each reading the shared copy."""
    (data_ref,) = data
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    res = job.resources
    use_gpu = res.num_gpus > 0
    per_worker = {"CPU": res.num_cpus, **({"GPU": res.num_gpus} if use_gpu else {})}
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"spec": job.spec, "data": data_ref, "workdir": str(job.workdir),
                           "fingerprint": job.fingerprint, "sink": job.sink, "num_cpus": res.num_cpus},
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        run_config=RunConfig(name=f"{job.spec.name}-{job.fingerprint}", storage_path=storage,
                             failure_config=FailureConfig(max_failures=res.max_restarts)),
    )
    trainer.fit()
    written = Trainer(job.spec, {}, job.workdir, job.fingerprint)
    result, summary = written.load_finished(), written.read_summary()
    result.reused, result.resumed_from_epoch = False, summary.get("resumed_from_epoch", 0)  # trained just now
    result.placement = {**result.placement, "workers": res.workers, "pid": os.getpid()}
    return result
