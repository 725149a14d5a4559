"""Training many models at once on Ray: one actor per model, resources from config, live progress."""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import ray
import torch

from ensemble.base import storage
from ensemble.base.errors import DistillError, ResourceError
from ensemble.cluster.connect import connect_ray
from ensemble.cluster.data_parallel import fit_data_parallel
from ensemble.cluster.restarts import LOST, Supervised, check_max_restarts, is_lost
from ensemble.data.registry import from_numpy, to_numpy
from ensemble.data.split import Split
from ensemble.training.packing import pack_groups, pack_trainer
from ensemble.training.trainer import Trainer, TrainResult, TrainSpec, epoch_metrics, resolve_device


@dataclass
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    workers: int = 1  # data-parallel workers per model (ensemble.cluster.data_parallel), each with the above
    max_restarts: int = 3  # ray.max_restarts: a model's actor started again after a lost node (cluster.restarts)


def check_feasible(requests: dict[str, Resources]) -> None:
    """Fail now, with the reason, if no node could ever host an actor (Ray would wait forever)."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    for name, res in requests.items():
        if not any(n.get("CPU", 0) >= res.num_cpus and n.get("GPU", 0) >= res.num_gpus for n in nodes):
            largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
            raise ResourceError(
                f"{name}: asks for num_cpus={res.num_cpus:g}, num_gpus={res.num_gpus:g} per actor, but the largest "
                f"node of the Ray cluster has CPU={largest.get('CPU', 0):g}, GPU={largest.get('GPU', 0):g}"
            )


@ray.remote
class TrainerActor:
    """Trains one model; threaded (``max_concurrency=2``) so the driver can poll progress during ``fit``."""

    def __init__(self, num_threads: int, num_gpus: float, restarts: int = 0):
        # Two actors each running torch with all cores' threads thrash: one thread per CPU granted.
        torch.set_num_threads(max(1, num_threads))
        self.device = resolve_device(num_gpus)
        self._raylet_pid = os.getppid()
        self._restarts = restarts  # how many actors of this model were lost before this one (cluster.restarts)
        self._progress: dict = {"status": "starting"}

    def placement(self) -> dict:
        context = ray.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "device": str(self.device),
            "torch_threads": torch.get_num_threads(),
            "pid": os.getpid(),
            "restarts": self._restarts,
        }

    def fit(self, spec: TrainSpec, data: dict, workdir: str, fingerprint: str, sink=None) -> TrainResult:
        splits = {name: from_numpy(arrays) for name, arrays in data.items()}
        started = time.time()
        self._progress = {"status": "training", "epoch": 0, "epochs": spec.train.epochs}

        def on_epoch(record: dict) -> None:
            if os.getppid() != self._raylet_pid:
                # The raylet that started this worker is gone (its driver was SIGKILLed with the local cluster):
                # nobody will read the result. Stop at this epoch boundary, its checkpoint saved, rather than
                # train on beside the rerun that will resume from it.
                os._exit(1)
            self._progress = {"status": "training", "epochs": spec.train.epochs, **record}
            if sink is not None:
                sink(epoch_metrics(record), step=record["epoch"])

        # The folder's URI when it is in object storage: this node works in its own mirror of it.
        trainer = Trainer(spec, splits, storage.localize(workdir), fingerprint, self.device)
        trainer.placement = self.placement()  # written to result.json beside the scores
        result = trainer.fit(on_epoch)
        self._place([result], started)
        return result

    def fit_pack(self, specs: list[TrainSpec], data: dict, workdirs: list[str], fingerprints: list[str],
                 sinks: list) -> list[TrainResult]:
        """Several members as one vectorised model (:mod:`ensemble.training.packing`), each logged to its own run."""

        splits = {name: from_numpy(arrays) for name, arrays in data.items()}
        started = time.time()
        self._progress = {"status": "training", "epoch": 0, "epochs": specs[0].train.epochs}

        def on_epoch(m: int, record: dict) -> None:
            if os.getppid() != self._raylet_pid:
                os._exit(1)  # the driver is gone: see fit
            self._progress = {"status": "training", "epochs": specs[0].train.epochs, **record}
            if sinks[m] is not None:
                sinks[m](epoch_metrics(record), step=record["epoch"])

        trainer = pack_trainer(specs, splits, [storage.localize(w) for w in workdirs], fingerprints, self.device)
        trainer.placement = self.placement()
        results = trainer.fit_members(on_epoch)
        self._place(results, started)
        return results

    def _place(self, results: list[TrainResult], started: float) -> None:
        # Peak resident memory of this actor and of any DataLoader workers it started (Linux reports KiB).
        peak_kib = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                       resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        for result in results:
            result.placement = {**self.placement(), "started": started, "finished": time.time(),
                                "peak_rss_mb": peak_kib / 1024}
        self._progress = {**self._progress, "status": "done"}

    def progress(self) -> dict:
        return self._progress


@dataclass
class TrainJob:
    spec: TrainSpec
    workdir: Path
    fingerprint: str
    resources: Resources = field(default_factory=Resources)
    sink: Callable | None = None


def put_splits(splits: dict[str, Split]):
    """Put the data in the object store once; every actor on a node maps the same shared memory."""
    if not ray.is_initialized():
        return None  # everything is finished on disk: no actor will read the data
    return ray.put({name: to_numpy(split) for name, split in splits.items()})


def train_many(jobs: list[TrainJob], splits: dict[str, Split], show_progress: bool = True,
               max_restarts: int | None = None) -> list[TrainResult]:
    """Train every job concurrently as resources allow; finished work on disk is reused without an actor. A model
    whose actor or node is lost starts again on a live node, at most ``max_restarts`` times (by default its
    ``resources.max_restarts``), and resumes from its newest checkpoint (:mod:`ensemble.cluster.restarts`)."""

    data_ref = put_splits(splits)
    results: dict[int, TrainResult] = {}
    pending: dict = {}  # task -> the job indices it trains (several for a pack)
    actors: dict[int, ray.actor.ActorHandle] = {}
    supervisors: dict = {}  # task -> the Supervised that restarts its actor when it is lost
    for group in pack_groups([job.spec for job in jobs]):
        finished = [Trainer(jobs[i].spec, splits, jobs[i].workdir, jobs[i].fingerprint).load_finished()
                    for i in group]
        if all(result is not None for result in finished):
            results.update(zip(group, finished))
            continue
        if data_ref is None:  # a finished-looking model failed to load: it needs training after all
            connect_ray()
            data_ref = put_splits(splits)
        job = jobs[group[0]]
        if job.resources.workers > 1:

            # Absolute: Ray Train's workers do not run in the driver's working directory.
            job = replace(job, workdir=Path(job.workdir).resolve())
            pending[fit_data_parallel.remote(job, [data_ref], str(job.workdir.parent / ".ray_train"))] = group
            continue
        members = ", ".join(jobs[i].spec.name for i in group)
        name = job.spec.name if job.spec.pack is None else f"pack {job.spec.pack} ({members})"
        watched = Supervised(name, job.resources.num_cpus, job.resources.num_gpus, check_max_restarts(
            job.resources.max_restarts if max_restarts is None else max_restarts), _launcher(jobs, group, data_ref))
        task = watched.start()
        actors.update({i: watched.actor for i in group})
        pending[task], supervisors[task] = group, watched
    _wait_for(pending, actors, results, ProgressView(jobs, results, enabled=show_progress), supervisors)
    return [results[i] for i in range(len(jobs))]


def _launcher(jobs: list[TrainJob], group: list[int], data_ref) -> Callable:
    """How the actor of ``group`` (one model, or a pack) starts and its fit is sent: at first and after a loss."""
    job = jobs[group[0]]

    def launch(options: dict, restarts: int):
        actor = TrainerActor.options(**options).remote(int(job.resources.num_cpus), job.resources.num_gpus, restarts)
        if job.spec.pack is None:
            return actor, actor.fit.remote(job.spec, data_ref, storage.portable(job.workdir), job.fingerprint,
                                           job.sink)
        return actor, actor.fit_pack.remote([jobs[i].spec for i in group], data_ref,
                                            [storage.portable(jobs[i].workdir) for i in group],
                                            [jobs[i].fingerprint for i in group], [jobs[i].sink for i in group])

    return launch


def _restarted(ref, err: BaseException, group: list[int], pending: dict, actors: dict, supervisors: dict) -> None:
    """The lost actor's model started again on a live node; anything else (a data-parallel task's error) raised."""
    watched = supervisors.pop(ref, None)
    if watched is None or not is_lost(err):
        raise err
    task = watched.restart(err)
    pending[task], supervisors[task] = group, watched
    actors.update({i: watched.actor for i in group})


def _wait_for(pending: dict, actors: dict, results: dict, view: "ProgressView", supervisors: dict) -> None:
    """Collect each task's results as it finishes, showing progress, restarting lost actors; kill every actor on
    the way out."""
    try:
        with view:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in done:
                    group = pending.pop(ref)
                    try:
                        outcome = _unwrap(ref)
                    except LOST as err:
                        _restarted(ref, err, group, pending, actors, supervisors)
                        continue
                    for i, result in zip(group, outcome if isinstance(outcome, list) else [outcome]):
                        results[i] = result
                        view.finish(i, result)
                    for actor in {id(a): a for a in (actors.pop(i, None) for i in group) if a}.values():
                        ray.kill(actor)
                    supervisors.pop(ref, None)
                for watched in supervisors.values():
                    watched.check_hostable()
                view.poll(actors)
    finally:
        for actor in {id(a): a for a in actors.values()}.values():
            ray.kill(actor)
        for ref, group in pending.items():
            if group[0] not in actors:  # a data-parallel task: stop it and the workers it started
                ray.cancel(ref, force=True, recursive=True)
        _read_outcomes(pending)


def _read_outcomes(refs, seconds: float = 2.0) -> None:
    """Read what the unfinished tasks ended with (their error, or their killed actor's): an error nobody reads is
    printed by Ray at exit as an 'Unhandled error' traceback, beside the one-line message of the error that stopped
    the run. Bounded: a task whose end has not arrived within ``seconds`` is left alone."""
    deadline = time.monotonic() + seconds
    for ref in refs:
        try:
            ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
        except Exception:  # noqa: BLE001 - the outcome is read to be discarded
            pass


def _unwrap(ref):
    """Re-raise a user error from an actor as itself, so the CLI reports one line instead of a remote traceback."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, DistillError):
            raise cause from None
        raise


class ProgressView:
    """A live table on a terminal; one line per epoch elsewhere (job logs, CI)."""

    def __init__(self, jobs: list[TrainJob], results: dict, enabled: bool = True):
        self.jobs = jobs
        self.enabled = enabled
        self.live_mode = enabled and sys.stdout.isatty()
        self.state = {i: {"status": "reused" if i in results else "queued"} for i in range(len(jobs))}
        self.printed_epoch = {i: 0 for i in range(len(jobs))}
        self.live = None
        self.started = time.perf_counter()

    def __enter__(self):
        if self.live_mode:
            from rich.live import Live

            self.live = Live(self._table(), refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(*exc)

    def poll(self, actors: dict) -> None:
        if not self.enabled:
            return
        refs = {i: actor.progress.remote() for i, actor in actors.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=0.2)
        for i, ref in refs.items():
            if ref in ready:
                try:
                    self.state[i] = ray.get(ref)
                except ray.exceptions.RayError:
                    self.state[i] = {**self.state[i], "status": "restarting"}
        self._render()

    def finish(self, i: int, result: TrainResult) -> None:
        last = result.history[-1] if result.history else {}
        self.state[i] = {**last, "status": "done", "epochs": self.jobs[i].spec.train.epochs}
        self._render()

    def _render(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
            return
        if not self.enabled:
            return
        for i, state in self.state.items():
            epoch = state.get("epoch", 0)
            if epoch and epoch != self.printed_epoch[i]:
                self.printed_epoch[i] = epoch
                print(
                    f"[{self.jobs[i].spec.name}] epoch {epoch}/{state.get('epochs')} "
                    f"loss {state.get('train_loss', float('nan')):.4f} "
                    f"val_acc {state.get('val_accuracy', float('nan')):.4f}",
                    flush=True,
                )

    def _table(self):
        from rich.table import Table

        table = Table(title=f"training ({time.perf_counter() - self.started:.0f} s)")
        for column in ("model", "role", "status", "epoch", "train loss", "val acc", "samples/s"):
            table.add_column(column)
        for i, state in self.state.items():
            spec = self.jobs[i].spec
            fmt = lambda key, f: f.format(state[key]) if key in state else "-"  # noqa: E731
            table.add_row(
                spec.name, spec.role, state.get("status", ""),
                f"{state.get('epoch', 0)}/{spec.train.epochs}",
                fmt("train_loss", "{:.4f}"), fmt("val_accuracy", "{:.4f}"), fmt("samples_per_second", "{:.0f}"),
            )
        return table
