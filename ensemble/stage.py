"""The ensemble stage driven by config: load the data, build the factories, fit an :class:`Ensemble`."""

from __future__ import annotations

from pathlib import Path

from ensemble.api import Ensemble
from ensemble.config import StageConfig
from ensemble.data.registry import load_dataset
from ensemble.data.split import DatasetSplits
from ensemble.data.transforms import channel_stats
from ensemble.engine.fit import FitOptions
from ensemble.metrics.scores import SCORE_KEYS, Score
from ensemble.models.registry import RegisteredModel
from ensemble.results import EnsembleSection, ModelRow, Placement
from ensemble.schema.sections import ResourcesConfig
from ensemble.track.tracking import Tracker
from ensemble.training.soft_targets import ensemble_probs
from ensemble.training.trainer import learning_curves


def load_data(config: StageConfig) -> DatasetSplits:
    data = config.data
    splits = load_dataset(data.name, data.root, data.download, data.val_size, config.seed, data.train_limit,
                          data.in_memory, data.memory_budget_mb, data.num_workers, data.decoded_cache)
    if data.normalize:
        splits.normalization = channel_stats(splits.train.x)
    return splits


def fit_options(config: StageConfig, resources: ResourcesConfig, output_dir: Path, tracker: Tracker | None,
                parent_run_id: str | None, show_progress: bool) -> FitOptions:
    """The :class:`ensemble.engine.fit.FitOptions` every stage passes: where, on what resources, tracked where."""
    return FitOptions(
        output_dir=output_dir, num_cpus=resources.num_cpus, num_gpus=resources.num_gpus,
        workers_per_model=resources.workers_per_model,
        tracker=tracker, parent_run_id=parent_run_id, run_params=config.model_dump(mode="json"),
        ray_address=config.ray.address, ray_num_cpus=config.ray.num_cpus, ray_num_gpus=config.ray.num_gpus,
        max_restarts=config.ray.max_restarts,
        show_progress=show_progress, dataset_name=config.data.name, dataset_source=config.data.root,
    )


def run_ensemble_stage(
    config: StageConfig,
    data: DatasetSplits,
    output_dir: Path,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    show_progress: bool = True,
) -> tuple[Ensemble, dict]:
    """Train members and generalist; return the fitted ensemble and its ``results.json`` sections."""
    shape, classes = data.input_shape, data.num_classes
    member_model, generalist_model = config.ensemble.model, config.generalist_model()
    ensemble = Ensemble(
        RegisteredModel.from_config(member_model, shape, classes, data.normalization), config.ensemble,
        generalist=(RegisteredModel.from_config(generalist_model, shape, classes, data.normalization)
                    if config.generalist.enabled else None),
        generalist_train=config.generalist_train(), seed=config.seed, jitter=config.data.shift,
        hflip=config.data.augment.hflip,
        options=fit_options(config, config.ensemble.resources, output_dir / "ensemble", tracker, parent_run_id,
                            show_progress),
    )
    ensemble.fit(data.train, data.val, data.test, num_classes=classes)
    return ensemble, summarize(ensemble, data, config.ensemble.mean)


def model_row(result, run_id: str | None, test_labels, verdict: dict | None = None) -> ModelRow:
    """A model's row, scored from its cached test logits (so a model reused from an older run gets every score);
    ``verdict``: its quality (:func:`ensemble.metrics.quality.assess`)."""
    m = result.metrics
    return ModelRow(name=result.name, **Score.from_logits(result.logits["test"], test_labels).fields("test_"),
                    val_accuracy=m["val_accuracy"], epochs_trained=m["epochs_trained"],
                    best_epoch=m["best_epoch"], reused=result.reused, resumed_from_epoch=result.resumed_from_epoch,
                    mlflow_run_id=run_id, curves=learning_curves(result.history),
                    placement=Placement.of(result.placement), **(verdict or {}))


def summarize(ensemble: Ensemble, data: DatasetSplits, mean: str) -> dict:
    """Typed ``results.json`` sections from the cached test logits: nothing is recomputed."""
    y = data.test.y
    members = [r for r in ensemble.results_ if r.role == "member"]
    stacked = [r.logits["test"] for r in members]
    scores = {}
    for kind in ("arithmetic", "geometric"):
        score = Score.from_probs(ensemble_probs(stacked, 1.0, kind), y)
        scores.update({f"test_{key}_{kind}": getattr(score, key) for key in SCORE_KEYS})
    section = EnsembleSection(members=[model_row(r, ensemble.run_ids_.get(r.name), y, ensemble.quality_.get(r.name))
                                       for r in members], mean=mean,
                              **scores, **{f"test_{key}": scores[f"test_{key}_{mean}"] for key in SCORE_KEYS})
    results = {"ensemble": section}
    generalist = [r for r in ensemble.results_ if r.role == "generalist"]
    if generalist:
        results["generalist"] = model_row(generalist[0], ensemble.run_ids_.get("generalist"), y,
                                          ensemble.quality_.get("generalist"))
    return results
