"""The student stage driven by config: distil the chosen teacher, compare with the baseline, export, register."""

from __future__ import annotations

from pathlib import Path

from ensemble.api import Ensemble
from ensemble.base import storage
from ensemble.data.rows import as_input
from ensemble.data.split import DatasetSplits
from ensemble.models.registry import RegisteredModel, count_parameters
from ensemble.results import Placement
from ensemble.stage import fit_options
from ensemble.track.tracking import Tracker
from ensemble.training.teacher import Teacher
from ensemble.training.trainer import learning_curves
from specialists.api import SpecialistEnsemble

from .api import Distiller
from .config import Config
from .export import measure_latency, publish_student
from .formats import FORMATS
from .plots import plot_reliability
from .results import StudentSection
from .teachers import TrainedStages, build_teacher

LATENCY_BATCH = 256
FOLLOWING = ("agreement", "kl_from_teacher", "baseline_agreement", "baseline_kl_from_teacher")


def choose_teacher(config: Config, ensemble: Ensemble, specialists: SpecialistEnsemble | None) -> Teacher:
    """The registered teacher that ``student.teacher`` names, built from the trained stages."""
    return build_teacher(config.student.teacher, TrainedStages(ensemble, specialists), config)


def build_distiller(config: Config, data: DatasetSplits, teacher, output_dir: Path, tracker: Tracker | None = None,
                    parent_run_id: str | None = None, show_progress: bool = True, **overrides) -> Distiller:
    """The configured :class:`Distiller` (the student stage's, and each sweep trial's with ``overrides``)."""
    section = config.student
    options = fit_options(config, section.resources, output_dir / "student", tracker, parent_run_id, show_progress)
    student = RegisteredModel.from_config(section.model, data.input_shape, data.num_classes, data.normalization)
    # ``overrides`` name FitOptions fields (a sweep trial's in_process=True): the Distiller checks each name.
    return Distiller(teacher, student, section, seed=config.seed, options=options, **overrides)


def run_student_stage(
    config: Config,
    data: DatasetSplits,
    ensemble: Ensemble,
    specialists: SpecialistEnsemble | None,
    output_dir: Path,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    show_progress: bool = True,
) -> tuple[Distiller, dict]:
    distiller = build_distiller(config, data, choose_teacher(config, ensemble, specialists), output_dir, tracker,
                                parent_run_id, show_progress)
    distiller.fit(data.train, data.val, data.test)
    batch = as_input(data.test.x[:LATENCY_BATCH])
    files = export_formats(distiller, config.student.export, output_dir / "student", batch)
    report = distiller.evaluate(data.test)
    student_run = distiller.run_ids_.get("student")
    registered = {}
    if tracker is not None and student_run:
        cfg = config.student
        tags = {"teacher": cfg.teacher, "temperature": cfg.temperature, "alpha": cfg.alpha,
                "test_accuracy": report["student"].accuracy}
        reused = distiller.results_[0].reused
        registered = publish_student(tracker, student_run, distiller.student_, batch[:2], reused, cfg.registered_model,
                                     cfg.registered_alias, tags)
    section = student_section(config, distiller, report, batch, files, registered)
    figure = output_dir / "student" / "reliability.png"
    plot_reliability(report.details["reliability"], "Reliability on the test set (15 bins)").savefig(figure, dpi=110)
    storage.push(figure)
    if tracker is not None and parent_run_id:
        tracker.log_metrics(parent_run_id, {f"student_{k}": v for k, v in section.model_dump().items()
                                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tracker.log_artifact(parent_run_id, figure, "report")
    return distiller, {"student": section}


def export_formats(distiller: Distiller, formats: list[str], folder: Path, batch) -> dict[str, dict]:
    """The student written in each of ``formats`` (each checked by :func:`distill.formats.export_model`), with its
    file size and its median latency on ``batch`` through the runtime that loads it (onnxruntime for onnx)."""
    files = {}
    for name in formats:
        fmt = FORMATS[name]
        path = distiller.export(folder / f"student{fmt.suffix}", batch[:2], name)
        runner = fmt.load(path)
        (storage.push_tree if path.is_dir() else storage.push)(path)
        files[name] = {"path": storage.portable(path), "bytes": path.stat().st_size,
                       "latency_ms_per_batch": measure_latency(runner, batch)["median_ms"]}
    return files


def student_section(config: Config, distiller: Distiller, report, batch, files: dict[str, dict],
                    registered: dict) -> StudentSection:
    """The ``student`` section of ``results.json``: scores, cost, where it went."""
    section, student, teacher = config.student, distiller.results_[0], distiller.teacher.online()
    scores = {key: value for model, prefix in (("student", ""), ("teacher", "teacher_"), ("baseline", "baseline_"))
              if model in report for key, value in report[model].fields(f"{prefix}test_").items()}
    following = {key: report.details[key] for key in FOLLOWING if key in report.details}
    main = files[section.export[0]]
    fields = dict(
        **scores, **following, teacher=section.teacher, temperature=section.temperature, alpha=section.alpha,
        loss=section.loss, method=section.method, mean=section.mean,
        transfer_examples=len(distiller.transfer_indices_), export_path=main["path"], file_bytes=main["bytes"],
        formats=files,
        params=count_parameters(distiller.student_), teacher_params=count_parameters(teacher),
        latency_ms_per_batch=measure_latency(distiller.student_, batch)["median_ms"],
        teacher_latency_ms_per_batch=measure_latency(lambda x: teacher(x, 1.0).probs, batch)["median_ms"],
        latency_batch_size=LATENCY_BATCH, epochs_trained=student.metrics["epochs_trained"], reused=student.reused,
        resumed_from_epoch=student.resumed_from_epoch, mlflow_run_id=distiller.run_ids_.get("student"),
        placement=Placement.of(student.placement),
        curves=learning_curves(student.history), **registered,
    )
    fields.update(distiller.quality_.get("student", {}))
    if "baseline" in report:
        baseline = distiller.quality_.get("student_baseline", {})
        fields.update(baseline_mlflow_run_id=distiller.run_ids_.get("student_baseline"),
                      baseline_curves=learning_curves(distiller.results_[1].history),
                      **{f"baseline_{key}": value for key, value in baseline.items()})
    if distiller.left_out_:
        before, details = report["student_before_shift"], report.details
        fields.update(left_out_classes=distiller.left_out_, bias_shift=distiller.bias_shift_,
                      test_errors_before_shift=before.errors, test_accuracy_before_shift=before.accuracy,
                      left_out_test_examples=details["left_out_examples"],
                      left_out_test_errors_before_shift=details["left_out_errors_before_shift"],
                      left_out_test_errors=details["left_out_errors"])
    return StudentSection(**fields)
