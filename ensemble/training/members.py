"""What the one training loop (:mod:`ensemble.training.trainer`) asks of the model it trains, and the state of a run.

A model may be made of several members (``ensemble.pack``: k members stacked into one vectorised module,
:class:`ensemble.training.packing.PackedModel`). The loop never asks which kind it holds; it asks the model, through
:class:`MemberStack`, for each member's slice (weights, optimiser state, gradient norm, logits), and writes each
member into its own folder (:class:`Member`). A plain model answers as a stack of one: itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ensemble.base.checkpoint import CheckpointDir, load_verified
from ensemble.base.errors import CheckpointError
from ensemble.base.records import has_fields, read_json
from ensemble.schema.sections import TrainConfig
from ensemble.training.objectives import Objective
from ensemble.training.spec import TrainResult, TrainSpec

# What a damaged record of a finished model (result.json, model.pt, logits.pt) costs: the model is unfinished again.
AGAIN = "the model counts as unfinished: it resumes from its newest valid checkpoint (or trains again)"


@runtime_checkable
class MemberStack(Protocol):
    """A model made of ``size`` members. Its objective's terms are vectors, one entry per member (a plain model's
    are scalars: one member); the loop sums them for the backward pass, so each member's gradient is its own."""

    size: int

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's state dict, on the CPU: what it alone would have."""

    def load_member_state(self, m: int, state: dict[str, torch.Tensor]) -> None: ...

    def member_optimizer_state(self, state: dict, m: int) -> dict:
        """Member m's slice of the whole's optimiser state: what its own optimiser would hold."""

    def stacked_optimizer_state(self, states: list[dict]) -> dict:
        """The whole's optimiser state from its members' (the inverse of :meth:`member_optimizer_state`)."""

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """Clip each member's gradient to ``max_norm`` by its own norm; returns the (k,) norms before clipping."""

    def member_logits(self, x, batch_size: int, device: torch.device) -> torch.Tensor:
        """(k, N, C): every member's logits for every row of ``x``, in order, in eval mode."""


@dataclass
class Member:
    """One model a run writes: its spec (name, role), folder and fingerprint."""

    spec: TrainSpec
    workdir: Path
    fingerprint: str

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        self.checkpoints = CheckpointDir(self.workdir / "checkpoints")

    def is_finished(self) -> bool:
        """Cheap check (no tensors loaded): a result for this exact fingerprint is on disk."""
        summary = self.read_summary()
        return summary is not None and summary["fingerprint"] == self.fingerprint

    def read_summary(self) -> dict | None:
        """``result.json``, or ``None`` when missing or damaged: a damaged one makes the model unfinished."""
        return read_json(self.workdir / "result.json", AGAIN, valid=lambda v: has_fields(
            v, fingerprint=str, metrics=dict, history=list))

    def load_finished(self, data: dict) -> TrainResult | None:
        summary = self.read_summary()
        if summary is None or summary["fingerprint"] != self.fingerprint:
            return None
        state = load_verified(self.workdir / "model.pt", AGAIN)
        logits = load_verified(self.workdir / "logits.pt", AGAIN) if state is not None else None
        if state is None or not isinstance(logits, dict):
            return None
        for split, rows_of in data.items():
            rows = len(logits[split]) if split in logits else 0
            if rows != len(rows_of):
                raise CheckpointError(
                    f"{self.workdir / 'logits.pt'}: stale teacher cache, {rows} rows of {split} logits for a "
                    f"{len(rows_of)}-example {split} split; delete the file and rerun to recompute it from model.pt")
        placement = summary.get("placement")  # where it trained; absent from files written before it was recorded
        return TrainResult(self.spec.name, self.spec.role, state, logits, summary["history"], summary["metrics"],
                           reused=True, placement=placement if isinstance(placement, dict) else {})

    def checkpoint_at(self, epoch: int) -> dict | None:
        return load_verified(self.checkpoints.root / f"epoch_{epoch:04d}.pt")


def fresh_best() -> dict:
    return {"val_accuracy": -1.0, "epoch": 0, "state": None}


@dataclass
class Run:
    """One training run's mutable state, saved (each member's slice into its own folder) in every checkpoint."""

    model: nn.Module
    members: MemberStack  # the model's members: the model itself, or a stack of several
    optimizer: torch.optim.Optimizer
    scheduler: object
    generator: torch.Generator
    objective: Objective
    constraints: list
    history: list[list[dict]] = field(default_factory=list)  # per member
    best: list[dict] = field(default_factory=list)  # per member
    start_epoch: int = 0
    epochs_since_best: list[int] = field(default_factory=list)  # per member
    stepped: object = None  # what the steps call: the model, channels-last and/or compiled
    scaler: object = None  # fp16's gradient scaler
    train: TrainConfig = field(default_factory=TrainConfig)  # what each step does: clipping and the like
    clipped: object = 0  # per member, steps of this epoch whose gradient was clipped (a tensor: no sync per step)
    clip_steps: int = 0  # steps of this epoch that were checked: this worker's own, under data parallelism

    def __post_init__(self):
        k = self.members.size
        self.history = self.history or [[] for _ in range(k)]
        self.best = self.best or [fresh_best() for _ in range(k)]
        self.epochs_since_best = self.epochs_since_best or [0] * k

    @property
    def clip(self) -> float | None:
        return self.train.grad_clip_norm

    def step(self, loss: torch.Tensor) -> None:
        if self.scaler is None:
            loss.backward()
            self._clip()
            self.optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if self.clip is not None or self.train.grad_clip_value is not None:
            self.scaler.unscale_(self.optimizer)  # the threshold is on the true gradient, not the scaled one
        self._clip()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _clip(self) -> None:
        # A few huge early steps (a T²-scaled soft term on a wide CNN head) can drive every BatchNorm shift below
        # zero and leave all ReLUs dead for good; a bounded step cannot. A data-parallel group clips alike: DDP
        # has averaged the gradients by now.
        if self.train.grad_clip_value is not None:
            # Element-wise, so a pack's stacked parameters are clipped exactly as each member's alone.
            torch.nn.utils.clip_grad_value_(self.model.parameters(), self.train.grad_clip_value)
        if self.clip is not None:
            norms = self.members.clip_grad_norm(self.clip)
            self.clipped = self.clipped + (norms > self.clip)
            self.clip_steps += 1

    def clipped_share(self) -> list[float]:
        """Per member, the share of this epoch's checked steps whose gradient was clipped."""
        counts = torch.zeros(self.members.size) + torch.as_tensor(self.clipped).cpu()
        return [float(c) / max(1, self.clip_steps) for c in counts]

    def checkpoint(self, m: int, fingerprint: str, epoch: int, optimizer_state: dict) -> dict:
        """Member m's checkpoint: its slice of the model and optimiser; the schedule and generators are shared."""
        return {"fingerprint": fingerprint, "epoch": epoch, "model": self.members.member_state(m),
                "optimizer": self.members.member_optimizer_state(optimizer_state, m),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                "generator": self.generator.get_state(), "objective": self.objective.state_dict(),
                "torch_rng": torch.get_rng_state(), "history": self.history[m], "best": self.best[m],
                "scaler": self.scaler.state_dict() if self.scaler is not None else {}}
