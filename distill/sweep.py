"""``distill sweep``: a grid over student settings (alpha x T, ...) on Ray Tune, every trial a real student stage.

The stages before the students are trained (or reused) once, by :mod:`distill.orchestrate`; each trial's teacher
(the grid may vary ``student.teacher``) and its cached logits travel to the trials through the object store, so a
trial costs one student's training. Each trial is a nested MLflow run under one ``sweep`` parent run; the table
and the plots (heatmap and surface of test accuracy over the first two grid keys) go to the parent run and to
``<output_dir>/sweep/``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from pathlib import Path

import torch
import yaml

from ensemble.base import storage
from ensemble.base.errors import ConfigError, DistillError
from ensemble.base.records import write_text
from ensemble.cluster.connect import connect_ray
from ensemble.schema.loading import apply_overrides, validate_config
from ensemble.track.tracking import Tracker, redact

from .config import Config, config_hash
from .orchestrate import Trained, orchestrate, update_results
from .plugins import install, registered
from .stage import build_distiller, choose_teacher
from .sweep_report import plot_sweep, print_sweep, sweep_rows

SELECTION_METRIC = "val_accuracy"  # trials are ranked on validation data; the test split is only reported


def parse_grid(items: list[str]) -> dict[str, list]:
    """``student.alpha=0.1,0.5,0.9`` -> {"student.alpha": [0.1, 0.5, 0.9]}; values are YAML (lists in brackets)."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"--grid {item!r}: expected dotted.key=value1,value2,...")
        try:
            values = yaml.safe_load(f"[{raw}]")
        except yaml.YAMLError as err:
            raise ConfigError(f"--grid {item!r}: values are not valid YAML ({str(err).splitlines()[0]})") from None
        grid[key.strip()] = values
    return grid


def trial_overrides(grid: dict[str, list]) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def trial_config(base: dict, params: dict) -> Config:
    tree = copy.deepcopy(base)
    apply_overrides(tree, [f"{key}={json.dumps(value)}" for key, value in params.items()])
    tree["student"]["baseline"] = False  # alpha = 0 is the hard-label student; one baseline per trial is waste
    return validate_config(Config, tree, f"sweep trial {params}")


def check_grid(config: Config) -> list[tuple[dict, Config]]:
    """Every trial's grid values and config, validated before anything trains; only student settings may vary."""
    grid = config.sweep.grid
    if not grid:
        raise ConfigError("sweep.grid: empty; pass --grid student.temperature=1,2,4 (repeatable) or set sweep.grid")
    for key, values in grid.items():
        if not key.startswith("student."):
            raise ConfigError(f"sweep.grid: {key!r} is not a student setting; a sweep reuses one teacher, so only "
                              "student.* keys may vary")
        if not values:
            raise ConfigError(f"sweep.grid: {key!r} has no values")
    trials = trial_overrides(grid)
    base = config.model_dump(mode="json")
    return [(params, trial_config(base, params)) for params in trials]


def trial_key(params: dict) -> str:
    """A trial's name among the teachers sent to the trials: its grid values, as Tune hands them back."""
    return json.dumps(params, sort_keys=True, default=str)


def _trial(params: dict, *, base: dict, data, teachers: dict, tracking: tuple, parent_id: str, output_dir: str,
           threads: int, plugins: dict) -> None:
    """One Tune trial: the configured student stage with ``params`` applied, trained in this worker."""
    from ray import tune

    torch.set_num_threads(threads)
    install(plugins)  # this worker validates the trial's config and builds its student: the plugins' names too
    config = trial_config(base, params)
    tracker = Tracker(*tracking)
    distiller = build_distiller(config, data, teachers[trial_key(params)], Path(output_dir), tracker, parent_id, False,
                                in_process=True)
    distiller.fit(data.train, data.val, data.test)
    run_id = distiller.run_ids_.get("student")
    label = ", ".join(f"{key.removeprefix('student.')}={value}" for key, value in params.items())
    if run_id:
        tracker.set_tags(run_id, {"mlflow.runName": f"student {label}", **{f"sweep.{k}": v for k, v in params.items()}})
    report = distiller.evaluate(data.test)
    result = distiller.results_[0]
    tune.report({SELECTION_METRIC: result.metrics["val_accuracy"], "test_accuracy": report["student"].accuracy,
                 "test_errors": report["student"].errors, "best_epoch": result.metrics["best_epoch"],
                 "reused": result.reused, "mlflow_run_id": run_id or ""})


def _tuner(config: Config, trainable, output_dir: Path, show_progress: bool):
    from ray import tune

    return tune.Tuner(
        trainable,
        param_space={key: tune.grid_search(values) for key, values in config.sweep.grid.items()},
        tune_config=tune.TuneConfig(metric=SELECTION_METRIC, mode="max", reuse_actors=True,
                                    max_concurrent_trials=config.sweep.max_concurrent),
        run_config=tune.RunConfig(name=f"sweep-{config_hash(config)}", storage_path=str((output_dir / "tune")
                                  .resolve()), verbose=1 if show_progress else 0, callbacks=_silent_file_loggers()),
    )


def _portable(teacher):
    """The teacher without its tracker (an MLflow client does not pickle); everything else travels as is."""
    portable = copy.copy(teacher)
    if hasattr(portable, "options"):
        portable.options = dataclasses.replace(portable.options, tracker=None)
    return portable


class _Silent:
    """Mixed into a Tune file logger: it takes that logger's place and writes nothing."""

    def __init__(self):
        pass  # the real loggers' state (and TensorBoardX's import) is not needed

    def log_trial_start(self, trial):
        pass

    def log_trial_restore(self, trial):
        pass

    def log_trial_save(self, trial):
        pass

    def log_trial_result(self, iteration, trial, result):
        pass

    def log_trial_end(self, trial, failed=False):
        pass


def _silent_file_loggers() -> list:
    """MLflow is the record; Tune's own CSV, JSON and TensorBoard files would only duplicate it. Tune adds each of
    those loggers only when the callbacks passed have none of its kind, so one silent logger of each kind keeps
    them out, with no ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS`` written into the caller's environment."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    return [type(f"Silent{base.__name__}", (_Silent, base), {})() for base in
            (CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback)]


def run_sweep(config: Config, show_progress: bool = True) -> dict:
    if storage.is_uri(config.output_dir):
        # Tune's trials write their students where they run: on another node a mirror path is that node's own disk.
        raise ConfigError(f"output_dir: {storage.redact(config.output_dir)}: distill sweep does not take a storage "
                          "URI yet (its Ray Tune trials write to their own node's disk); give a folder every node "
                          "shares (NFS), or run the stages with distill run")
    trials = check_grid(config)
    results, rows = orchestrate(config, "sweep", trial_teachers(config, trials), lambda t: _sweep(t, trials),
                                show_progress, tags={"stage": "sweep", "trials": len(trials)})
    print_sweep(rows, list(config.sweep.grid))
    return results


def trial_teachers(config: Config, trials: list[tuple[dict, Config]]) -> dict[str, str]:
    """Every trial's teacher, with the field that chose it: the config's own, or the grid's."""
    return {trial.student.teacher: "student.teacher" if trial.student.teacher == config.student.teacher
            else "sweep.grid student.teacher" for _, trial in trials}


def _trainable(trained: Trained, trials: list[tuple[dict, Config]]):
    """The Tune trainable: :func:`_trial` with the data and each trial's teacher, built once here from the
    stages, travelling through the object store."""
    from ray import tune

    config = trained.config
    teachers = {trial_key(params): _portable(choose_teacher(trial, trained.ensemble, trained.specialists))
                for params, trial in trials}
    cpus = config.sweep.num_cpus
    return tune.with_resources(
        tune.with_parameters(_trial, base=config.model_dump(mode="json"), data=trained.data, teachers=teachers,
                             tracking=(trained.tracker.uri, config.tracking.experiment), parent_id=trained.parent_id,
                             output_dir=str(trained.output_dir.resolve()), threads=max(1, int(cpus)),
                             plugins=registered()),
        {"cpu": cpus, "gpu": config.student.resources.num_gpus},
    )


def _sweep(trained: Trained, trials: list[tuple[dict, Config]]) -> tuple[dict, list[dict]]:
    """``distill sweep``'s step after the stages: the trials on Tune, then their table, plots and records."""
    config, tracker, parent_id, output_dir = trained.config, trained.tracker, trained.parent_id, trained.output_dir
    sections, keys = trained.sections, list(config.sweep.grid)
    connect_ray(config.ray.address, config.ray.num_cpus, config.ray.num_gpus)
    grid = _tuner(config, _trainable(trained, trials), output_dir, trained.show_progress).fit()
    if grid.errors:
        raise DistillError(f"sweep: {len(grid.errors)} of {len(trials)} trials failed; first: "
                           f"{str(grid.errors[0]).strip().splitlines()[-1]}")
    rows = sweep_rows(grid, keys)
    sweep_dir = output_dir / "sweep"
    sweep_dir.mkdir(exist_ok=True)
    plots = plot_sweep(rows, keys, sweep_dir)
    best = max(rows, key=lambda r: r[SELECTION_METRIC])
    sections["sweep"] = {"grid": config.sweep.grid, "selection_metric": SELECTION_METRIC, "trials": rows,
                         "best": best, "plots": [str(p) for p in plots]}
    sections["mlflow"] = {"tracking_uri": redact(tracker.uri), "experiment_id": tracker.experiment_id,
                          "parent_run_id": parent_id}
    write_text(sweep_dir / "sweep.json", json.dumps(sections["sweep"], indent=1) + "\n")
    tracker.log_metrics(parent_id, {f"best_{k}": v for k, v in best.items()
                                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for path in [*plots, sweep_dir / "sweep.json"]:
        tracker.log_artifact(parent_id, path, "sweep")
    return update_results(output_dir / "results.json", sections), rows
