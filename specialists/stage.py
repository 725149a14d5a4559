"""The specialist stage driven by config, on top of a fitted ensemble stage."""

from __future__ import annotations

from pathlib import Path

from ensemble.api import Ensemble
from ensemble.base import storage
from ensemble.base.errors import ConfigError
from ensemble.base.records import write_json
from ensemble.config import StageConfig
from ensemble.data.split import DatasetSplits
from ensemble.results import Placement
from ensemble.stage import fit_options
from ensemble.track.tracking import Tracker

from .api import SpecialistEnsemble
from .config import SpecialistsConfig
from .grouping import plot_covariance, resolve_groups
from .results import SpecialistRow, SpecialistsSection


def check_section(section: SpecialistsConfig, data: DatasetSplits) -> None:
    """What can be checked against the data before any training: fail in seconds, not after the ensemble."""
    if section.groups is not None:
        resolve_groups(section.groups, data.class_names)
    elif section.count > data.num_classes:
        raise ConfigError(f"specialists.count: {section.count} specialists for {data.num_classes} classes; use at "
                          f"most {data.num_classes}")


def run_specialist_stage(
    config: StageConfig,
    section: SpecialistsConfig,
    data: DatasetSplits,
    ensemble: Ensemble,
    output_dir: Path,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    show_progress: bool = True,
) -> tuple[SpecialistEnsemble, dict]:
    if ensemble.generalist_ is None:
        raise ConfigError("specialists: need a generalist; set generalist.enabled: true")
    stage_dir = output_dir / "specialists"
    specialists = SpecialistEnsemble(
        ensemble.generalist_, section, generalist_factory=ensemble.generalist_factory,
        class_names=data.class_names, seed=config.seed, jitter=config.data.shift, hflip=config.data.augment.hflip,
        options=fit_options(config, section.resources, stage_dir, tracker, parent_run_id, show_progress),
    )
    specialists.fit(data.train, data.val, data.test)
    report = specialists.evaluate(data.test)
    groups = specialists.groups
    summary = SpecialistsSection(
        groups=groups, group_names=[[data.class_names[c] for c in group] for group in groups],
        matrix=section.matrix if section.groups is None else "given by hand",
        **report["generalist"].fields("generalist_test_"), **report["combined"].fields("test_"),
        by_covering=report.details["by_covering"], per_class=report.details["per_class"],
        combine=specialists.last_info_,
        members=[SpecialistRow(name=r.name, group=groups[i], test_accuracy=r.metrics["test_accuracy"],
                               val_accuracy=r.metrics["val_accuracy"], epochs_trained=r.metrics["epochs_trained"],
                               reused=r.reused, resumed_from_epoch=r.resumed_from_epoch,
                               placement=Placement.of(r.placement),
                               mlflow_run_id=specialists.run_ids_.get(r.name), **specialists.quality_.get(r.name, {}))
                 for i, r in enumerate(specialists.results_)],
    )
    _save_artifacts(specialists, summary, data.class_names, stage_dir, tracker, parent_run_id)
    return specialists, {"specialists": summary}


def _save_artifacts(specialists, summary, class_names, stage_dir: Path, tracker, parent_run_id) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    groups_file = stage_dir / "groups.json"
    write_json(groups_file, {"groups": summary.groups, "names": summary.group_names})
    files = [groups_file]
    if specialists.class_matrix_ is not None:
        figure = plot_covariance(specialists.class_matrix_, summary.groups, class_names,
                                 f"{specialists.config.matrix} of the generalist's predictions")
        heatmap = stage_dir / "class_matrix.png"
        figure.savefig(heatmap, dpi=110)
        storage.push(heatmap)
        files.append(heatmap)
    if tracker is not None and parent_run_id:
        for path in files:
            tracker.log_artifact(parent_run_id, path, "specialists")
        tracker.log_metrics(parent_run_id, {
            "specialists_test_accuracy": summary.test_accuracy, "specialists_test_errors": summary.test_errors,
            "specialists_test_nll": summary.test_nll, "specialists_test_ece": summary.test_ece,
            "specialists_test_brier": summary.test_brier,
            "specialists_generalist_test_accuracy": summary.generalist_test_accuracy,
            "specialists_count": len(summary.groups), "eq5_iterations": summary.combine["iterations"],
        })
