"""Train a list of :class:`TrainSpec` on Ray with one nested MLflow run each: shared by every stage's API."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from torch import nn

from ensemble.base import storage
from ensemble.base.errors import ConfigError
from ensemble.cluster.data_parallel import check_workers_fit
from ensemble.cluster.runner import Resources, TrainJob, check_feasible, connect_ray, train_many
from ensemble.cluster.visibility import check_shared_output
from ensemble.data.split import Split
from ensemble.models.registry import check_output_width
from ensemble.schema.loading import unknown_keyword
from ensemble.track.model_runs import link_reused, model_params, placement_tags, record_run, recorded_run
from ensemble.track.tracking import Tracker, dataset_inputs, flatten
from ensemble.training.final_fit import cut_to_train, final_data_fingerprint, final_spec, train_and_val
from ensemble.training.packing import check_packs, pack_groups, pack_trainer
from ensemble.training.precision import check_precision
from ensemble.training.trainer import Trainer, TrainResult, TrainSpec, epoch_metrics


@dataclass
class FitOptions:
    """Where and how models train, and where they are tracked.

    output_dir: checkpoints and finished models (one folder per model, named by its fingerprint).
    num_cpus / num_gpus: per actor; num_cpus also sets torch's threads; fractional GPUs pack models.
    tracker / parent_run_id: MLflow; each model gets a nested run under the parent, ``run_params`` as params; a
    model reused from disk is linked from the parent to the run that trained it (:mod:`ensemble.track.model_runs`).
    parent_summary: each model's final scores go to the parent run too, as ``<name>_<score>`` (the Python API's).
    ray_address / ray_num_cpus / ray_num_gpus: the cluster to join, or the size of a local Ray.
    max_restarts: how often a model's actor lost with its node may start again elsewhere (ensemble.cluster.restarts).
    """

    output_dir: str | Path = "runs/ensemble"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    tracker: Tracker | None = None
    parent_run_id: str | None = None
    run_params: dict = field(default_factory=dict)
    parent_summary: bool = False
    ray_address: str | None = None
    ray_num_cpus: int | None = None
    ray_num_gpus: float | None = None
    show_progress: bool = True
    in_process: bool = False  # train here, one model after another (inside a Ray Tune trial, a notebook, a debugger)
    tracking_uri: str | None = None  # the Python API's MLflow store when no run is active (see api_tracking)
    experiment: str | None = None
    workers_per_model: int = 1  # data-parallel Ray Train workers per model (ensemble.cluster.data_parallel)
    dataset_name: str = "data"  # how each run's datasets are named in MLflow (with the splits' digests and sizes)
    dataset_source: str = "python"
    max_restarts: int = 3  # ray.max_restarts

    @property
    def resources(self) -> Resources:
        return Resources(self.num_cpus, self.num_gpus, self.workers_per_model, self.max_restarts)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def updated(self, where: str, values: dict) -> "FitOptions":
        """These options with ``values`` applied by field name; any other name is a one-line :class:`ConfigError`
        naming ``where`` and the nearest field (a dataclass would raise a bare ``TypeError`` of its ``__init__``)."""
        for key in values:
            if key not in self.names():
                raise ConfigError(unknown_keyword(where, key, self.names()))
        return replace(self, **values)


@dataclass
class Fitted:
    results: list[TrainResult]
    models: list[nn.Module]
    run_ids: dict[str, str]
    fingerprints: list[str] = field(default_factory=list)  # each model's folder hash, in spec order


RECORDS = ["result.json", "mlflow.json", "model.pt", "model.pt.sha256", "logits.pt", "logits.pt.sha256"]
TRACKING_ENVIRONMENT = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID")


@contextmanager
def api_tracking(options: FitOptions, name: str, params: dict) -> Iterator[FitOptions]:
    """Where one ``fit`` of the Python API is tracked, as MLflow users expect.

    An explicit ``tracker`` (the CLI's) wins. Inside ``with mlflow.start_run():`` every model gets a run nested
    under the active one. Otherwise, when ``tracking_uri=`` / ``experiment=`` are given or MLflow's own environment
    variables are set, a parent run named ``name`` holds them. With none of these nothing is tracked.
    """
    import mlflow

    active = mlflow.active_run() if options.tracker is None else None
    wanted = options.tracking_uri or options.experiment or any(os.environ.get(v) for v in TRACKING_ENVIRONMENT)
    if options.tracker is not None or (active is None and not wanted):
        yield options
        return
    params = options.run_params or _without_models(params)
    if active is not None:
        tracker = Tracker(mlflow.get_tracking_uri(), experiment_id=active.info.experiment_id)
        tracker.log_new_params(active.info.run_id, params)  # the caller's run: it may hold these, or its own
        yield replace(options, tracker=tracker, parent_run_id=active.info.run_id, run_params=params,
                      parent_summary=True)
        return
    experiment_id = None if options.experiment else os.environ.get("MLFLOW_EXPERIMENT_ID")
    tracker = Tracker(options.tracking_uri or mlflow.get_tracking_uri(),
                      options.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default", experiment_id)
    with tracker.run(name, tags={"api": name}) as parent_id:
        tracker.log_params(parent_id, params)
        yield replace(options, tracker=tracker, parent_run_id=parent_id, run_params=params, parent_summary=True)


def _without_models(params: dict) -> dict:
    """The API's sections without their ``model``: the API trains the factories it is given, not the registry model
    that field names for the CLI (each model's run records its factory,
    :func:`ensemble.track.model_runs.model_params`)."""
    return {name: {k: v for k, v in section.items() if k != "model"} if isinstance(section, dict) else section
            for name, section in params.items()}


def fit_specs(specs: list[TrainSpec], splits: dict[str, Split], data_fingerprint: str, num_classes: int,
              options: FitOptions) -> Fitted:
    """Check every model, train them concurrently on Ray, log each to its own nested MLflow run; then retrain those
    with ``train.final_fit`` on train + validation (:mod:`ensemble.training.final_fit`)."""
    fitted = _fit_once(specs, splits, data_fingerprint, num_classes, options)
    chosen = [i for i, spec in enumerate(specs) if spec.train.final_fit]
    if not chosen:
        return fitted
    merged = train_and_val(splits)
    n_train = len(splits["train"])
    finals = [final_spec(specs[i], fitted.results[i], fitted.fingerprints[i], merged["train"].y, n_train)
              for i in chosen]
    refit = _fit_once(finals, merged, final_data_fingerprint(merged), num_classes, options)
    for i, result, model in zip(chosen, refit.results, refit.models):
        fitted.results[i], fitted.models[i] = cut_to_train(result, n_train), model
    # The final models' runs stand for the models; phase 1's runs stay in MLflow as the selection runs.
    return Fitted(fitted.results, fitted.models, {**fitted.run_ids, **refit.run_ids}, fitted.fingerprints)


def _fit_once(specs: list[TrainSpec], splits: dict[str, Split], data_fingerprint: str, num_classes: int,
              options: FitOptions) -> Fitted:
    input_shape = tuple(splits["train"].x.shape[1:])
    for spec in specs:
        if spec.train.precision == "fp16" and options.num_gpus == 0:
            check_precision("fp16", torch.device("cpu"))  # fail before any actor or run starts
        width = num_classes if spec.target_map is None else int(spec.target_map.max()) + 1
        check_output_width(spec.model_factory(), input_shape, width, spec.name)
    check_packs(specs)
    if options.workers_per_model > 1 and any(spec.pack is not None for spec in specs):
        raise ConfigError("ensemble.pack and resources.workers_per_model > 1 exclude each other: pack small "
                          "members, or spread a large one over workers")
    jobs = []
    root = storage.localize(options.output_dir)  # a storage URI (the API's output_dir=) works in its mirror
    if options.workers_per_model > 1 and storage.locate(root) is not None:
        raise ConfigError("resources.workers_per_model > 1 needs a local output_dir for now: Ray Train's workers do "
                          "not write through the storage mirror yet")
    for spec in specs:
        fp = spec.fingerprint(data_fingerprint)
        jobs.append(TrainJob(spec, root / f"{spec.name}-{fp}", fp, options.resources))
        # What this process reads of each model folder, as the store has it now (a no-op for a local folder).
        storage.pull(jobs[-1].workdir, RECORDS)
    finished = [Trainer(job.spec, {}, job.workdir, job.fingerprint).is_finished() for job in jobs]
    if not all(finished) and not options.in_process:
        # Only unfinished work needs a cluster: a rerun of finished stages starts no Ray at all.
        connect_ray(options.ray_address, options.ray_num_cpus, options.ray_num_gpus)
        check_feasible({spec.name: options.resources for spec in specs})
        # The path as the actors get it: as given, but absolute for data-parallel workers (train_many).
        actor_dir = Path(options.output_dir).resolve() if options.workers_per_model > 1 else options.output_dir
        # A folder in object storage (its URI, given for its mirror) needs no shared disk.
        check_shared_output(storage.portable(root), actor_dir, options.num_cpus, options.num_gpus)
        if options.workers_per_model > 1:

            check_workers_fit(specs[0].name, options.workers_per_model, options.num_cpus, options.num_gpus)
    runs = _Runs(options, splits)
    runs.start(jobs, finished)
    try:
        if options.in_process:
            results = train_here(jobs, splits)
        else:
            results = train_many(jobs, splits, show_progress=options.show_progress)
    except BaseException as err:
        runs.end("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    runs.finish(jobs, results)
    run_ids = runs.run_ids
    models = []
    for spec, result in zip(specs, results):
        model = spec.model_factory()
        model.load_state_dict(result.state_dict)
        models.append(model.eval())
    return Fitted(results, models, run_ids, [job.fingerprint for job in jobs])


def train_here(jobs: list[TrainJob], splits: dict[str, Split]) -> list[TrainResult]:
    """The models in this process, one pack or model after another, logging each epoch to its run like an actor."""
    results: dict[int, TrainResult] = {}
    for group in pack_groups([job.spec for job in jobs]):
        members = [jobs[i] for i in group]

        def on_epoch(m: int, record: dict) -> None:
            if members[m].sink is not None:
                members[m].sink(epoch_metrics(record), step=record["epoch"])

        if members[0].spec.pack is None:
            job = members[0]
            outcome = [Trainer(job.spec, splits, job.workdir, job.fingerprint).fit(lambda r: on_epoch(0, r))]
        else:
            outcome = pack_trainer([j.spec for j in members], splits, [j.workdir for j in members],
                                   [j.fingerprint for j in members]).fit_members(on_epoch)
        results.update(zip(group, outcome))
    return [results[i] for i in range(len(jobs))]


class _Runs:
    """The MLflow runs of one :func:`_fit_once`: one started per model that trains, or that this store has no run of
    yet; a model reused from disk is linked to the run that trained it instead (:mod:`ensemble.track.model_runs`)."""

    def __init__(self, options: FitOptions, splits: dict[str, Split]):
        self.options, self.tracker = options, options.tracker
        self.inputs = dataset_inputs(options.dataset_name, options.dataset_source, splits) if self.tracker else []
        self.run_ids: dict[str, str] = {}  # every model's run: started now, or the one that trained it
        self.started: set[str] = set()

    def start(self, jobs: list[TrainJob], finished: list[bool]) -> None:
        if self.tracker is None:
            return
        links = {}
        for job, done in zip(jobs, finished):
            run = recorded_run(self.tracker, job.workdir, job.fingerprint) if done else None
            if run is not None:
                links[job.spec.name] = run
                self.run_ids[job.spec.name] = run.info.run_id
            else:
                self._start(job)
        link_reused(self.tracker, self.options.parent_run_id, links)

    def _start(self, job: TrainJob) -> str:
        tracker, spec = self.tracker, job.spec
        tags = {"role": spec.role, **spec.tags}
        run_id = tracker.start_run(spec.name, self.options.parent_run_id, tags)
        tracker.log_params(run_id, {**flatten(self.options.run_params), **model_params(spec.model_factory),
                                    "seed": spec.seed, "fingerprint": job.fingerprint, **tags})
        tracker.log_inputs(run_id, self.inputs)
        self.run_ids[spec.name] = run_id
        self.started.add(spec.name)
        job.sink = tracker.sink(run_id)
        return run_id

    def finish(self, jobs: list[TrainJob], results: list[TrainResult]) -> None:
        tracker = self.tracker
        if tracker is None:
            return
        for job, result in zip(jobs, results):
            live = result.name in self.started  # its curves went to its run epoch by epoch
            if not live:
                if result.reused:
                    self._summarize(result)
                    continue  # the run that trained it holds everything
                self._start(job)  # linked, but trained after all (its folder's files were damaged)
            run_id = self.run_ids[result.name]
            if result.reused or not live:
                # Finished in an earlier invocation, or trained unseen: copy its curves so this run is complete.
                for record in result.history:
                    tracker.log_metrics(run_id, epoch_metrics(record), step=record["epoch"])
            tracker.set_tags(run_id, {"reused": result.reused, "resumed_from_epoch": result.resumed_from_epoch,
                                      **placement_tags(result.placement)})
            tracker.log_metrics(run_id, final_scores(result))
            tracker.end_run(run_id, "FINISHED")
            record_run(tracker, job.workdir, run_id)
            self._summarize(result)

    def _summarize(self, result: TrainResult) -> None:
        """With ``parent_summary``, the model's final scores on the parent as ``<name>_<score>``, unless it holds
        them already (a second fit of the same models under the caller's run)."""
        parent = self.options.parent_run_id
        if not self.options.parent_summary or not parent:
            return
        held = self.tracker.get_run(parent)
        held = held.data.metrics if held is not None else {}
        scores = {f"{result.name}_{key}": value for key, value in final_scores(result).items()}
        self.tracker.log_metrics(parent, {k: v for k, v in scores.items() if held.get(k) != v})

    def end(self, status: str) -> None:
        for name in self.started:
            self.tracker.end_run(self.run_ids[name], status)


def final_scores(result: TrainResult) -> dict:
    """Final scores under their own names, so they never mix with the per-epoch curves."""
    return {("best_" + k if k.startswith("val_") else k): v for k, v in result.metrics.items()}
