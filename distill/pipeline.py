"""``distill ensemble|specialists|run``: the stages up to one of them (:mod:`distill.orchestrate`), then the
student, ``results.json`` and the report."""

from __future__ import annotations

from ensemble.track.tracking import redact

from .config import Config
from .orchestrate import Trained, orchestrate, update_results
from .report import print_ensemble_summary, print_specialists_summary, print_summary, summary_rows, write_report
from .results import MlflowSection, Results
from .stage import run_student_stage

COMMANDS = {"ensemble": "ensemble", "specialists": "specialists", "student": "run"}  # the CLI command of each


def run(config: Config, until: str = "student", show_progress: bool = True) -> Results:
    """Run the stages up to ``until``; each reuses what earlier invocations finished on disk."""
    student = until == "student" and config.student.enabled
    teachers = {config.student.teacher: "student.teacher"} if student else {}
    results, sections = orchestrate(config, COMMANDS[until], teachers, lambda trained: _finish(trained, until),
                                    show_progress, tags={"stage": until})
    if until == "student":
        print_summary(results)
    else:
        print_ensemble_summary(results)
        if results.specialists is not None and "specialists" in sections:
            print_specialists_summary(results)
    return results


def _finish(trained: Trained, until: str) -> tuple[Results, dict]:
    """``distill run``'s step after the stages: its one student, then ``results.json`` and the report."""
    config, tracker, parent_id, sections = trained.config, trained.tracker, trained.parent_id, trained.sections
    models = {"ensemble": trained.ensemble}
    if trained.specialists is not None:
        models["specialists"] = trained.specialists
    if until == "student" and config.student.enabled:
        models["student"], more = run_student_stage(config, trained.data, trained.ensemble, trained.specialists,
                                                    trained.output_dir, tracker, parent_id, trained.show_progress)
        sections.update(more)
    sections["mlflow"] = MlflowSection(tracking_uri=redact(tracker.uri), experiment_id=tracker.experiment_id,
                                       parent_run_id=parent_id)
    if until == "student":
        sections["summary"] = summary_rows(Results.model_validate(sections), models)
    # A full run computed every section itself; dropping the old file keeps no stale stage of another config.
    results = update_results(trained.output_dir / "results.json", sections, merge=until != "student")
    if until == "student":
        for path in write_report(results, models, trained.data, trained.output_dir):
            tracker.log_artifact(parent_id, path, "report")
    tracker.log_artifact(parent_id, trained.output_dir / "results.json")
    return results, sections
