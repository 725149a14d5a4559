"""``results.json``: typed sections written by each stage and read back typed by the report."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from ensemble.results import EnsembleSection, ModelRow, Placement, Record
from specialists.results import SpecialistsSection


class StudentSection(Record):
    test_accuracy: float
    test_errors: int
    test_nll: float
    test_ece: float | None = None
    test_brier: float | None = None
    agreement: float | None = None  # top-1 agreement with the teacher on the test set
    kl_from_teacher: float | None = None  # mean KL(teacher || student) at T = 1, nats
    teacher: str
    teacher_test_accuracy: float
    teacher_test_errors: int
    teacher_test_nll: float
    teacher_test_ece: float | None = None
    teacher_test_brier: float | None = None
    temperature: float
    alpha: float
    loss: str
    method: str
    mean: str | None = None
    transfer_examples: int
    export_path: str  # the main file: the first of student.export
    file_bytes: int
    formats: dict[str, dict] = Field(default_factory=dict)  # format -> path, bytes, latency_ms_per_batch
    params: int
    teacher_params: int
    latency_ms_per_batch: float
    teacher_latency_ms_per_batch: float
    latency_batch_size: int
    epochs_trained: int
    reused: bool
    resumed_from_epoch: int
    placement: Placement | None = None  # where the student trained (ensemble.results.Placement)
    mlflow_run_id: str | None = None
    curves: dict[str, list[float]] = Field(default_factory=dict)
    registered_name: str | None = None
    registered_version: str | None = None
    registered_alias: str | None = None
    model_uri: str | None = None
    # the same student on hard labels (student.baseline)
    baseline_test_accuracy: float | None = None
    baseline_test_errors: int | None = None
    baseline_test_nll: float | None = None
    baseline_test_ece: float | None = None
    baseline_test_brier: float | None = None
    baseline_agreement: float | None = None
    baseline_kl_from_teacher: float | None = None
    baseline_mlflow_run_id: str | None = None
    baseline_curves: dict[str, list[float]] | None = None
    # classes the transfer set left out, and what the bias shift chosen on validation did on the test set
    left_out_classes: list[int] | None = None
    bias_shift: float | None = None
    test_errors_before_shift: int | None = None
    test_accuracy_before_shift: float | None = None
    left_out_test_examples: int | None = None
    left_out_test_errors_before_shift: int | None = None
    left_out_test_errors: int | None = None
    # the quality guard (ensemble.metrics.quality): "ok" or what is wrong, and the lines why;
    # baseline_* for the baseline
    quality: str | None = None
    warnings: list[str] = Field(default_factory=list)
    baseline_quality: str | None = None
    baseline_warnings: list[str] = Field(default_factory=list)


class SummaryRow(Record):
    model: str
    test_accuracy: float
    test_errors: int
    test_nll: float | None = None
    test_ece: float | None = None
    test_brier: float | None = None
    agreement: float | None = None  # students: top-1 agreement with their teacher
    params: int
    latency_ms: float | None = None
    quality: str | None = None  # "ok", "at chance", "far below baseline" (ensemble.metrics.quality); None: not assessed
    warnings: list[str] = Field(default_factory=list)
    node: str | None = None  # where it trained (Placement.label); None: a combination, in-process, or an older file


class MlflowSection(Record):
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


class SweepSection(Record):
    grid: dict[str, list]
    selection_metric: str
    trials: list[dict]
    best: dict
    plots: list[str]


class Results(Record):
    """Every section a run may leave; a partial run (``distill ensemble``) leaves the later ones unset."""

    ensemble: EnsembleSection | None = None
    generalist: ModelRow | None = None
    specialists: SpecialistsSection | None = None
    student: StudentSection | None = None
    sweep: SweepSection | None = None
    mlflow: MlflowSection | None = None
    summary: list[SummaryRow] | None = None

    @classmethod
    def read(cls, path: Path) -> "Results":
        return cls.model_validate_json(Path(path).read_text())

    def to_json(self) -> dict:
        return json.loads(self.model_dump_json(exclude_none=True))

