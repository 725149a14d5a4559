"""The one training loop. Ensemble members, the generalist, specialists and students all go through it.

It runs in-process (tests, benchmarks) or inside a Ray actor (:mod:`ensemble.cluster.runner`). Each epoch ends
with a verified checkpoint (model, optimiser, scheduler, RNG state), so a rerun resumes where it stopped,
and a finished model is reused from disk without training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ensemble.base.checkpoint import CheckpointDir, load_verified, save_verified
from ensemble.base.errors import CheckpointError, TrainingDiverged
from ensemble.base.lock import model_folder_lock
from ensemble.base.records import has_fields, read_json, write_json
from ensemble.data.augment import jitter
from ensemble.data.rows import as_input
from ensemble.data.split import Split
from ensemble.data.streaming import in_order, iterate_rows
from ensemble.data.transforms import hflip
from ensemble.metrics.scores import Score
from ensemble.training.objectives import Objective
from ensemble.training.optim import make_optimizer, make_scheduler
from ensemble.training.precision import autocast, check_precision, grad_scaler, prepare, to_memory_format
from ensemble.training.spec import TrainResult, TrainSpec


@torch.no_grad()
def predict_logits(model: nn.Module, x, batch_size: int = 2048, device="cpu") -> torch.Tensor:
    """Logits for every row of ``x`` (a tensor, or streamed :class:`ensemble.data.streaming.LazyImages`), in order."""
    was_training = model.training
    model.eval()
    out = [model(as_input(inputs.to(device))).float().cpu()
           for inputs in in_order(x, batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == y).float().mean()) if len(y) else float("nan")


def resolve_device(num_gpus: float) -> torch.device:
    """CUDA when GPUs were requested and are really there; otherwise the CPU (logical GPUs in tests)."""
    return torch.device("cuda") if num_gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


# What a damaged record of a finished model (result.json, model.pt, logits.pt) costs: the model is unfinished again.
AGAIN = "the model counts as unfinished: it resumes from its newest valid checkpoint (or trains again)"


@dataclass
class _Run:
    """One training run's mutable state, saved whole in every checkpoint."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    generator: torch.Generator
    objective: Objective
    constraints: list
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_accuracy": -1.0, "epoch": 0, "state": None})
    start_epoch: int = 0
    epochs_since_best: int = 0
    stepped: object = None  # what the steps call: the model, channels-last and/or compiled
    scaler: object = None  # fp16's gradient scaler
    clip: float | None = None  # train.grad_clip_norm
    clipped: object = 0  # steps of this epoch whose gradient was clipped (a tensor: no device sync per step)
    clip_steps: int = 0  # steps of this epoch that were checked: this worker's own, under data parallelism

    def step(self, loss: torch.Tensor) -> None:
        if self.scaler is None:
            loss.backward()
            self._clip()
            self.optimizer.step()
            return
        self.scaler.scale(loss).backward()
        if self.clip is not None:
            self.scaler.unscale_(self.optimizer)  # the threshold is on the true gradient, not the scaled one
        self._clip()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def _clip(self) -> None:
        # A few huge early steps (a T²-scaled soft term on a wide CNN head) can drive every BatchNorm shift below
        # zero and leave all ReLUs dead for good; a bounded step cannot. A data-parallel group clips alike: DDP
        # has averaged the gradients by now.
        if self.clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
            self.clipped = self.clipped + (norm > self.clip)
            self.clip_steps += 1

    def checkpoint(self, fingerprint: str, epoch: int) -> dict:
        return {"fingerprint": fingerprint, "epoch": epoch, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                "generator": self.generator.get_state(), "objective": self.objective.state_dict(),
                "torch_rng": torch.get_rng_state(), "history": self.history, "best": self.best,
                "scaler": self.scaler.state_dict() if self.scaler is not None else {}}


class Trainer:
    """Trains one :class:`TrainSpec` on in-memory splits, checkpointing into ``workdir``."""

    def __init__(self, spec: TrainSpec, data: dict[str, Split], workdir: Path, fingerprint: str, device="cpu",
                 shard: tuple[int, int] = (0, 1)):
        """``shard = (rank, world)``: one of ``world`` data-parallel workers (:mod:`ensemble.cluster.data_parallel`); each
        takes rows ``rank::world`` of every batch, and only rank 0 writes files."""
        self.spec = spec
        self.data = data
        self.workdir = Path(workdir)
        self.fingerprint = fingerprint
        self.device = torch.device(device)
        self.checkpoints = CheckpointDir(self.workdir / "checkpoints")
        self.rank, self.world = shard
        self.writes = self.rank == 0

    # --- finished work on disk ---

    def is_finished(self) -> bool:
        """Cheap check (no tensors loaded): a result for this exact fingerprint is on disk."""
        summary = self.read_summary()
        return summary is not None and summary["fingerprint"] == self.fingerprint

    def read_summary(self) -> dict | None:
        """``result.json``, or ``None`` when missing or damaged: a damaged one makes the model unfinished."""
        return read_json(self.workdir / "result.json", AGAIN, valid=lambda v: has_fields(
            v, fingerprint=str, metrics=dict, history=list))

    def load_finished(self) -> TrainResult | None:
        summary = self.read_summary()
        if summary is None or summary["fingerprint"] != self.fingerprint:
            return None
        state = load_verified(self.workdir / "model.pt", AGAIN)
        logits = load_verified(self.workdir / "logits.pt", AGAIN) if state is not None else None
        if state is None or not isinstance(logits, dict):
            return None
        for split, data in self.data.items():
            rows = len(logits[split]) if split in logits else 0
            if rows != len(data):
                raise CheckpointError(
                    f"{self.workdir / 'logits.pt'}: stale teacher cache, {rows} rows of {split} logits for a "
                    f"{len(data)}-example {split} split; delete the file and rerun to recompute it from model.pt")
        return TrainResult(
            self.spec.name, self.spec.role, state, logits, summary["history"], summary["metrics"], reused=True
        )

    def _steps_per_epoch(self) -> int:
        n_train = len(self.data["train"]) if "train" in self.data else 0
        if self.spec.sampler is not None:
            # The sampler decides how many examples an epoch visits; a throwaway generator leaves the run's alone.
            n_train = len(self.spec.sampler.epoch_order(n_train, torch.Generator().manual_seed(0)))
        return math.ceil(n_train / self.spec.train.batch_size)

    def _labels(self, split: str) -> torch.Tensor:
        y = self.data[split].y
        return y if self.spec.target_map is None else self.spec.target_map[y]

    # --- training ---

    def fit(self, on_epoch: Callable[[dict], None] | None = None) -> TrainResult:
        finished = self.load_finished()
        if finished is not None:
            return finished
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.writes:  # rank 0 of the same data-parallel group holds the folder
            return self._train_forked(on_epoch)
        # One writer per model folder: another process (a second run, an orphaned actor) waits here or is refused.
        with model_folder_lock(self.workdir, self.spec.name):
            # The holder we waited for may have finished this very model.
            return self.load_finished() or self._train_forked(on_epoch)

    def _train_forked(self, on_epoch: Callable[[dict], None] | None) -> TrainResult:
        """Train on a fork of torch's global generators: the caller's RNG state (a notebook's, a Tune trial's
        ``in_process`` fit) is the same afterwards, whatever training drew from it or seeded it to."""
        cuda = [self._cuda_index()] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            return self._train(on_epoch)

    def _cuda_index(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def _seed_global_rng(self, seed: int) -> None:
        """Dropout and other layers draw from the global generators: seed the CPU one (initial weights, CPU
        dropout) and, on a GPU, that device's, the generators :meth:`_train_forked` forks. ``torch.manual_seed``
        would seed every CUDA device, leaving the others changed for the caller."""
        torch.random.default_generator.manual_seed(seed)
        if self.device.type == "cuda":
            with torch.cuda.device(self._cuda_index()):
                torch.cuda.manual_seed(seed)

    def _train(self, on_epoch: Callable[[dict], None] | None) -> TrainResult:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            self.data = inputs_on_device(self.data, self.device, free)
        run = self._start()
        patience = self.spec.train.early_stopping_patience
        for epoch in range(run.start_epoch, self.spec.train.epochs):
            if patience is not None and run.epochs_since_best >= patience:
                break
            record = self._train_epoch(run, epoch)
            if on_epoch is not None:
                on_epoch(record)
        # Early stopping keeps the weights with the best validation accuracy.
        if run.best["state"] is not None:
            run.model.load_state_dict(run.best["state"])
        return self._finish(run.model, run.history, run.best, run.start_epoch)

    def _start(self) -> _Run:
        """The model, optimiser, schedule and generators, seeded; then the latest checkpoint's state, if any."""
        spec, train_cfg = self.spec, self.spec.train
        check_precision(train_cfg.precision, self.device)
        self._seed_global_rng(spec.seed)
        model = spec.model_factory().to(self.device)
        optimizer = make_optimizer(model, train_cfg)
        run = _Run(model, optimizer, make_scheduler(optimizer, train_cfg, self._steps_per_epoch()),
                   torch.Generator().manual_seed(spec.seed), spec.objective.to(self.device),
                   [m.constrain for m in model.modules() if callable(getattr(m, "constrain", None))],
                   stepped=data_parallel(prepare(model, train_cfg.channels_last, train_cfg.compile, spec.name),
                                         self.world),
                   scaler=grad_scaler(train_cfg.precision, self.device), clip=train_cfg.grad_clip_norm)
        checkpoint = self.checkpoints.latest()
        if checkpoint is not None:
            self._resume(run, checkpoint)
        return run

    def _resume(self, run: _Run, checkpoint: dict) -> None:
        if checkpoint.get("fingerprint") != self.fingerprint:
            raise CheckpointError(f"{self.checkpoints.root}: checkpoint belongs to another model or config")
        try:
            run.model.load_state_dict(checkpoint["model"])
            run.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            detail = "; ".join(line.strip() for line in str(err).splitlines()[1:3]) or str(err)
            raise CheckpointError(f"{self.checkpoints.root}: checkpoint does not fit the model ({detail}); "
                                  "it was saved by another architecture") from None
        if run.scheduler is not None and checkpoint.get("scheduler"):
            run.scheduler.load_state_dict(checkpoint["scheduler"])
        run.objective.load_state_dict(checkpoint.get("objective", {}))
        if run.scaler is not None and checkpoint.get("scaler"):
            run.scaler.load_state_dict(checkpoint["scaler"])
        run.generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        run.history, run.best, run.start_epoch = checkpoint["history"], checkpoint["best"], checkpoint["epoch"]
        run.epochs_since_best = run.start_epoch - run.best["epoch"] if run.best["epoch"] else 0

    def _train_epoch(self, run: _Run, epoch: int) -> dict:
        """One pass over the epoch's order, then validation, selection and a checkpoint; returns the epoch's record."""
        spec = self.spec
        started = time.perf_counter()
        run.model.train()
        n_train = len(self.data["train"])
        order = (spec.sampler.epoch_order(n_train, run.generator) if spec.sampler is not None
                 else torch.randperm(n_train, generator=run.generator))
        run.clipped, run.clip_steps = 0, 0
        term_sums, monitored = self._batches(run, order)
        lr = run.optimizer.param_groups[0]["lr"]
        if run.scheduler is not None and spec.train.scheduler.name != "onecycle":
            run.scheduler.step()
        train_seconds = time.perf_counter() - started
        terms_mean = {name: float(total) / len(order) for name, total in term_sums.items()}
        train_loss = sum(v for name, v in terms_mean.items() if name not in monitored)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"{spec.name}: training loss became {train_loss} in epoch {epoch + 1}; "
                                   "lower the learning rate (train.optimizer.lr) or check the inputs")
        record = {"epoch": epoch + 1, "train_loss": train_loss,
                  **{f"train_{name}": value for name, value in terms_mean.items()},
                  "val_accuracy": self._accuracy(run.model, "val"), "lr": lr}
        if run.clip is not None:
            record["grad_clipped"] = float(run.clipped) / max(1, run.clip_steps)
        if record["val_accuracy"] > run.best["val_accuracy"] or spec.train.select == "last":
            run.best = {"val_accuracy": record["val_accuracy"], "epoch": epoch + 1, "state": _cpu_state(run.model)}
            run.epochs_since_best = 0
        else:
            run.epochs_since_best += 1
        record.update(epoch_seconds=time.perf_counter() - started, samples_per_second=len(order) / train_seconds)
        if "test" in self.data:
            # For learning curves only: selection and early stopping never look at the test split.
            record["test_accuracy"] = self._accuracy(run.model, "test")
        run.history.append(record)
        if self.writes:
            self.checkpoints.save(epoch + 1, run.checkpoint(self.fingerprint, epoch + 1))
        return record

    def _batches(self, run: _Run, order: torch.Tensor) -> tuple[dict[str, torch.Tensor], set[str]]:
        """The optimisation steps of one epoch: each term's example-weighted sum, and the terms only monitored."""
        spec, batch_size = self.spec, self.spec.train.batch_size
        x_train, y_train = self.data["train"].x, self._labels("train")
        per_batch_schedule = spec.train.scheduler.name == "onecycle"
        term_sums: dict[str, torch.Tensor] = {}
        monitored: set[str] = set()
        pin = self.device.type == "cuda"
        for idx, inputs in iterate_rows(x_train, order, batch_size, pin_memory=pin):
            # uint8 images stay uint8 until here: a quarter of the bytes to move, then scaled on the device.
            xb = to_memory_format(as_input(inputs.to(self.device, non_blocking=True)), spec.train.channels_last)
            if spec.jitter:
                xb = jitter(xb, spec.jitter, run.generator)
            if spec.hflip:
                xb = hflip(xb, run.generator)
            if self.world > 1:
                # Augmented whole on every worker (the generators stay in step), then this worker's rows.
                if len(idx) < self.world:
                    continue  # a last batch too small to give every worker a row: skipped by all alike
                idx, xb = idx[self.rank :: self.world], xb[self.rank :: self.world]
            yb = y_train[idx].to(self.device, non_blocking=True)
            with autocast(spec.train.precision, self.device):
                _, terms = run.objective(run.stepped, xb, yb, idx)
            terms = {name: value.float() for name, value in terms.items()}
            # A term without a gradient (say, a discriminator's own loss) is logged, not optimised.
            monitored.update(name for name, value in terms.items() if not value.requires_grad)
            loss = sum(value for value in terms.values() if value.requires_grad)
            run.optimizer.zero_grad(set_to_none=True)
            run.step(loss)
            if per_batch_schedule:
                run.scheduler.step()
            for constrain in run.constraints:
                constrain()
            for name, value in terms.items():
                term_sums[name] = term_sums.get(name, 0) + value.detach() * len(idx)
        return term_sums, monitored

    def _accuracy(self, model: nn.Module, split: str) -> float:
        logits = predict_logits(model, self.data[split].x, self.spec.train.eval_batch_size, self.device)
        return accuracy(logits, self._labels(split))

    def _finish(self, model: nn.Module, history: list[dict], best: dict, start_epoch: int) -> TrainResult:
        eval_bs = self.spec.train.eval_batch_size
        logits = {split: predict_logits(model, self.data[split].x, eval_bs, self.device) for split in self.data}
        metrics = {"best_epoch": best["epoch"], "epochs_trained": len(history)}
        for split in self.data:
            labels = self._labels(split)
            score = Score.from_logits(logits[split], labels)
            metrics.update({key: value for key, value in score.fields(f"{split}_").items()
                            if len(labels) or key.endswith(("_accuracy", "_errors"))})
        state = _cpu_state(model)
        if self.writes:
            save_verified(state, self.workdir / "model.pt")
            save_verified(logits, self.workdir / "logits.pt")
            write_json(
                self.workdir / "result.json",
                {"name": self.spec.name, "role": self.spec.role, "fingerprint": self.fingerprint,
                 "metrics": metrics, "history": history, "resumed_from_epoch": start_epoch},
            )
        return TrainResult(
            self.spec.name, self.spec.role, state, logits, history, metrics, resumed_from_epoch=start_epoch
        )


DEVICE_DATA_SHARE = 0.5  # in-memory inputs move to the GPU when they take at most this share of its free memory


def inputs_on_device(data: dict[str, Split], device: torch.device, free_bytes: int) -> dict[str, Split]:
    """In-memory inputs (uint8 images stay uint8) moved to ``device`` once, together, when they fit
    :data:`DEVICE_DATA_SHARE` of ``free_bytes``: every batch is then gathered there instead of on the host and
    copied. Labels stay on the host (they index teacher caches and metrics there); streamed splits stay as they are."""
    in_memory = {name: split for name, split in data.items() if not split.lazy}
    needed = sum(split.x.element_size() * split.x.nelement() for split in in_memory.values())
    if not in_memory or needed > DEVICE_DATA_SHARE * free_bytes:
        return data
    return {**data, **{name: Split(split.x.to(device), split.y) for name, split in in_memory.items()}}


def data_parallel(stepped, world: int):
    """What the steps call in a data-parallel group: DDP averages the workers' gradients after each backward."""
    if world == 1:
        return stepped
    return torch.nn.parallel.DistributedDataParallel(stepped)


def epoch_metrics(record: dict) -> dict:
    """An epoch's record without its step number: what goes to MLflow as curves."""
    return {k: v for k, v in record.items() if k != "epoch"}


def learning_curves(history: list[dict]) -> dict[str, list[float]]:
    """Per-epoch accuracies and loss, compact enough for ``results.json`` (the plots are drawn from it)."""
    keys = ("train_loss", "val_accuracy", "test_accuracy")
    return {key: [round(r[key], 6) for r in history] for key in keys if history and key in history[0]}


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

