"""The student stage driven by config: distil the chosen teacher, compare with the baseline, export, register."""

from __future__ import annotations

from pathlib import Path

from ensemble.api import Ensemble
from ensemble.data import DatasetSplits
from ensemble.errors import ConfigError
from ensemble.models import RegisteredModel, count_parameters
from ensemble.stage import fit_options
from ensemble.tracking import Tracker
from ensemble.trainer import learning_curves
from specialists.api import SpecialistEnsemble

from .api import Distiller
from .config import Config
from .export import log_model, measure_latency

LATENCY_BATCH = 256


def choose_teacher(config: Config, ensemble: Ensemble, specialists: SpecialistEnsemble | None):
    kind = config.student.teacher
    if kind == "ensemble":
        return ensemble
    if kind == "generalist":
        if ensemble.generalist_ is None:
            raise ConfigError("student.teacher: 'generalist' needs generalist.enabled: true")
        return ensemble.generalist_
    if specialists is None:
        raise ConfigError("student.teacher: 'specialists' needs specialists.enabled: true")
    return specialists


def build_distiller(config: Config, data: DatasetSplits, teacher, output_dir: Path, tracker: Tracker | None = None,
                    parent_run_id: str | None = None, show_progress: bool = True, **overrides) -> Distiller:
    """The configured :class:`Distiller` (the student stage's, and each sweep trial's with ``overrides``)."""
    section = config.student
    model = section.model
    options = fit_options(config, section.resources, output_dir / "student", tracker, parent_run_id, show_progress)
    return Distiller(
        teacher,
        RegisteredModel.from_config(model, data.input_shape, data.num_classes),
        temperature=section.temperature,
        alpha=section.alpha,
        loss=section.loss,
        mean=section.mean or config.ensemble.mean,
        train=section.train,
        baseline=section.baseline,
        fraction=section.transfer.fraction,
        omit_classes=section.transfer.omit_classes,
        only_classes=section.transfer.only_classes,
        seed=config.seed,
        jitter=section.jitter,
        method=section.method,
        fitnets=section.fitnets.model_dump() if section.fitnets else None,
        adversarial=section.adversarial.model_dump(),
        **{**options, **overrides},
    )


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
    section = config.student
    distiller = build_distiller(config, data, choose_teacher(config, ensemble, specialists), output_dir, tracker,
                                parent_run_id, show_progress)
    distiller.fit(data.train, data.val, data.test)
    report = distiller.evaluate(data.test)
    export_path = distiller.export(output_dir / "student" / "student.torchscript.pt")

    batch = data.test.x[:LATENCY_BATCH]
    teacher = distiller.online_teacher()
    student_latency = measure_latency(distiller.student_, batch)
    teacher_latency = measure_latency(lambda x: teacher(x, 1.0).probs, batch)
    student_run = distiller.run_ids_.get("student")
    registered = {}
    if tracker is not None and student_run:
        registered = log_model(tracker, student_run, distiller.student_, batch[:2], section.registered_model)

    student = distiller.results_[0]
    main = {
        "test_accuracy": report["student"]["accuracy"],
        "test_errors": report["student"]["errors"],
        "teacher": section.teacher,
        "teacher_test_accuracy": report["teacher"]["accuracy"],
        "teacher_test_errors": report["teacher"]["errors"],
        "temperature": section.temperature,
        "alpha": section.alpha,
        "loss": section.loss,
        "method": section.method,
        "transfer_examples": len(distiller.transfer_indices_),
        "export_path": str(export_path),
        "file_bytes": export_path.stat().st_size,
        "params": count_parameters(distiller.student_),
        "teacher_params": count_parameters(teacher),
        "latency_ms_per_batch": student_latency["median_ms"],
        "teacher_latency_ms_per_batch": teacher_latency["median_ms"],
        "latency_batch_size": LATENCY_BATCH,
        "epochs_trained": student.metrics["epochs_trained"],
        "reused": student.reused,
        "resumed_from_epoch": student.resumed_from_epoch,
        "mlflow_run_id": student_run,
        "curves": learning_curves(student.history),
        **{key: value for key, value in registered.items() if key != "model_uri"},
        "model_uri": registered.get("model_uri"),
    }
    if "baseline" in report:
        main["baseline_test_accuracy"] = report["baseline"]["accuracy"]
        main["baseline_test_errors"] = report["baseline"]["errors"]
        main["baseline_mlflow_run_id"] = distiller.run_ids_.get("student_baseline")
        main["baseline_curves"] = learning_curves(distiller.results_[1].history)
    if distiller.left_out_:
        main.update({
            "left_out_classes": distiller.left_out_,
            "bias_shift": distiller.bias_shift_,
            "test_errors_before_shift": report["student_before_shift"]["errors"],
            "test_accuracy_before_shift": report["student_before_shift"]["accuracy"],
            "left_out_test_examples": report["left_out_examples"],
            "left_out_test_errors_before_shift": report["left_out_errors_before_shift"],
            "left_out_test_errors": report["left_out_errors"],
        })
    if tracker is not None and parent_run_id:
        tracker.log_metrics(parent_run_id, {f"student_{k}": v for k, v in main.items()
                                            if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return distiller, {"student": main}
