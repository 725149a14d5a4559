"""The ``specialists`` section of ``results.json``."""

from __future__ import annotations

from ensemble.results import Record, Trained


class CoveringRow(Record):
    """The paper's Table 4: test examples by how many specialists cover their correct class."""

    covering: int
    examples: int
    generalist_correct: int
    combined_correct: int
    delta_correct: int
    relative_change: float


class SpecialistRow(Trained):
    name: str
    group: list[int]
    test_accuracy: float
    val_accuracy: float
    epochs_trained: int
    mlflow_run_id: str | None = None


class SpecialistsSection(Record):
    groups: list[list[int]]
    group_names: list[list[str]]
    matrix: str
    generalist_test_accuracy: float
    generalist_test_errors: int
    generalist_test_nll: float
    generalist_test_ece: float | None = None
    generalist_test_brier: float | None = None
    test_accuracy: float
    test_errors: int
    test_nll: float
    test_ece: float | None = None
    test_brier: float | None = None
    by_covering: list[CoveringRow]
    per_class: list[dict]
    combine: dict
    members: list[SpecialistRow]
