"""Typed sections of ``results.json`` written by the ensemble stage; later stages add theirs beside them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ensemble.metrics.scores import SCORE_KEYS


class Record(BaseModel):
    """A results section: validated when written and when read back, so a renamed key fails loudly."""

    model_config = ConfigDict(extra="forbid")


class Placement(Record):
    """Where a model trained: its actor's node (id and IP) and GPU ids, and how many actors of it were lost with
    their node before this one (:mod:`ensemble.cluster.restarts`). Never part of a model's identity."""

    node_id: str
    node_ip: str | None = None
    gpu_ids: list[str] = Field(default_factory=list)
    restarts: int = 0

    @classmethod
    def of(cls, placement: dict) -> "Placement | None":
        """From a :class:`~ensemble.training.spec.TrainResult`'s ``placement``; None where it trained in-process."""
        if not placement or not placement.get("node_id"):
            return None
        return cls(node_id=placement["node_id"], node_ip=placement.get("node_ip"),
                   gpu_ids=[str(g) for g in placement.get("gpu_ids") or []], restarts=placement.get("restarts", 0))

    @property
    def label(self) -> str:
        """``10.0.0.5 (3f2a9c1d)``, with its GPUs and restarts when it has any: a summary table's node cell."""
        gpus = f" GPU {','.join(self.gpu_ids)}" if self.gpu_ids else ""
        restarts = f", {self.restarts} restart{'s' if self.restarts != 1 else ''}" if self.restarts else ""
        return f"{self.node_ip or '?'} ({self.node_id[:8]}){gpus}{restarts}"


def node_cell(placement: Placement | None) -> str:
    return placement.label if placement is not None else "-"


class Trained(Record):
    """Whether a model was trained now, resumed from a checkpoint, or reused finished from disk, and whether it
    learned anything (:mod:`~ensemble.metrics.quality`: ``quality`` "ok" or what is wrong, ``warnings`` the lines
    why)."""

    reused: bool = False
    resumed_from_epoch: int = 0
    quality: str | None = None  # None: written before the quality guard
    warnings: list[str] = Field(default_factory=list)
    placement: Placement | None = None  # None: trained in-process, or written before placement was recorded

    @property
    def status(self) -> str:
        if self.reused:
            done = "reused"
        else:
            done = f"resumed at {self.resumed_from_epoch}" if self.resumed_from_epoch else "trained"
        return done if self.quality in (None, "ok") else f"{done}, {self.quality.upper()}"


class ModelRow(Trained):
    """One trained model: its test and validation scores, how it got there, where it is tracked."""

    name: str
    test_accuracy: float
    test_errors: int
    test_nll: float | None = None
    test_ece: float | None = None
    test_brier: float | None = None
    val_accuracy: float
    epochs_trained: int
    best_epoch: int
    mlflow_run_id: str | None = None
    curves: dict[str, list[float]] = Field(default_factory=dict)


class EnsembleSection(Record):
    """The members, and the ensemble under both means; ``test_*`` repeat the configured ``mean``'s scores."""

    members: list[ModelRow]
    mean: str
    test_accuracy_arithmetic: float
    test_errors_arithmetic: int
    test_nll_arithmetic: float | None = None
    test_ece_arithmetic: float | None = None
    test_brier_arithmetic: float | None = None
    test_accuracy_geometric: float
    test_errors_geometric: int
    test_nll_geometric: float | None = None
    test_ece_geometric: float | None = None
    test_brier_geometric: float | None = None
    test_accuracy: float
    test_errors: int
    test_nll: float | None = None
    test_ece: float | None = None
    test_brier: float | None = None

    def score(self, mean: str) -> dict:
        """``{"accuracy", "errors", "nll", "ece", "brier"}`` under ``mean`` (None where an older file lacks one)."""
        return {key: getattr(self, f"test_{key}_{mean}") for key in SCORE_KEYS}
