"""The pipeline behind the CLI: stages run under one MLflow parent run and merge into ``results.json``."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from ensemble.base.checkpoint import make_output_dir
from ensemble.base.lock import FolderLock
from ensemble.base.records import read_json, report_damaged, write_json, write_text
from ensemble.stage import load_data, run_ensemble_stage
from ensemble.track.tracking import Tracker, dataset_inputs, redact
from specialists.stage import check_section, run_specialist_stage

from .config import Config, config_hash, dump_config
from .needs import check_needs
from .report import print_ensemble_summary, print_specialists_summary, print_summary, summary_rows, write_report
from .results import MlflowSection, Results
from .stage import run_student_stage

STAGES = ("ensemble", "specialists", "student")
COMMANDS = {"ensemble": "ensemble", "specialists": "specialists", "student": "run"}  # the CLI command of each


def update_results(path: Path, sections: dict, merge: bool = True) -> Results:
    """Write ``results.json`` from typed sections; ``merge`` keeps the sections other invocations wrote (a partial
    stage run), unless that file no longer reads as :class:`Results` (written by another version: dropped)."""
    old = {}
    afresh = "it is written afresh from this run's stages"
    stored = read_json(path, afresh) if merge else None
    if stored is not None:
        try:
            old = Results.model_validate(stored).model_dump(exclude_none=True)
        except ValidationError:
            report_damaged(path, "not the fields this version writes", afresh)
    results = Results.model_validate({**old, **sections})
    write_json(path, results.to_json())
    return results


def run(config: Config, until: str = "student", show_progress: bool = True) -> Results:
    """Run the stages up to ``until``; each reuses what earlier invocations finished on disk."""
    check_needs(config, COMMANDS[until])  # a stage or teacher missing what it needs fails before anything exists
    output_dir = make_output_dir(Path(config.output_dir))
    # Taken before any MLflow run or file: a second invocation on this folder is refused and leaves no trace.
    with FolderLock(output_dir, f"distill {COMMANDS[until]}"):
        return _run(config, until, show_progress, output_dir)


def _run(config: Config, until: str, show_progress: bool, output_dir: Path) -> Results:
    stages = STAGES[: STAGES.index(until) + 1]
    write_text(output_dir / "config.yaml", dump_config(config))
    # The data is read and checked before any MLflow work: a bad dataset leaves no run behind, like a bad config.
    data = load_data(config)
    if "specialists" in stages and config.specialists.enabled:
        check_section(config.specialists, data)
    tracker = Tracker(config.tracking.uri, config.tracking.experiment)
    tags = {"stage": until, "config_hash": config_hash(config), "output_dir": str(output_dir.resolve())}
    with tracker.run(parent_run_name(config, until), tags=tags) as parent_id, \
            tracker.system_metrics(parent_id, config.tracking.system_metrics):
        tracker.log_params(parent_id, config.model_dump(mode="json"))
        tracker.log_artifact(parent_id, output_dir / "config.yaml")
        tracker.log_inputs(parent_id, dataset_inputs(config.data.name, config.data.root, data.splits()))
        ensemble, sections = run_ensemble_stage(config, data, output_dir, tracker, parent_id, show_progress)
        _log_ensemble_metrics(tracker, parent_id, sections)
        trained = {"ensemble": ensemble}
        if "specialists" in stages and config.specialists.enabled:
            trained["specialists"], more = run_specialist_stage(config, config.specialists, data, ensemble,
                                                                output_dir, tracker, parent_id, show_progress)
            sections.update(more)
        if "student" in stages and config.student.enabled:

            trained["student"], more = run_student_stage(config, data, ensemble, trained.get("specialists"),
                                                         output_dir, tracker, parent_id, show_progress)
            sections.update(more)
        sections["mlflow"] = MlflowSection(tracking_uri=redact(tracker.uri), experiment_id=tracker.experiment_id,
                                           parent_run_id=parent_id)
        if until == "student":
            sections["summary"] = summary_rows(Results.model_validate(sections), trained)
        # A full run computed every section itself; dropping the old file keeps no stale stage of another config.
        results = update_results(output_dir / "results.json", sections, merge=until != "student")
        if until == "student":
            for path in write_report(results, trained, data, output_dir):
                tracker.log_artifact(parent_id, path, "report")
        tracker.log_artifact(parent_id, output_dir / "results.json")
    if until == "student":
        print_summary(results)
    else:
        print_ensemble_summary(results)
        if results.specialists is not None and "specialists" in sections:
            print_specialists_summary(results)
    return results


def parent_run_name(config: Config, until: str) -> str:
    """``mnist_hinton: run``: the config's name (its file's, unless it sets ``name``) and the CLI command."""
    return f"{config.name or 'config'}: {COMMANDS[until]}"


def _log_ensemble_metrics(tracker: Tracker, parent_id: str, sections: dict) -> None:
    ens = sections["ensemble"]
    metrics = {f"ensemble_{k}": v for k, v in ens.model_dump().items() if k.startswith("test_") and v is not None}
    if "generalist" in sections:
        metrics["generalist_test_accuracy"] = sections["generalist"].test_accuracy
    tracker.log_metrics(parent_id, metrics)
