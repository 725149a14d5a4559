"""The one training loop. Ensemble members, the generalist, specialists and students all go through it.

It runs in-process (tests, benchmarks) or inside a Ray actor (:mod:`ensemble.cluster.runner`). Each epoch ends
with a verified checkpoint (model, optimiser, scheduler, RNG state), so a rerun resumes where it stopped,
and a finished model is reused from disk without training.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import nn

from ensemble.base.checkpoint import save_verified
from ensemble.base.errors import CheckpointError, TrainingDiverged
from ensemble.base.lock import model_folder_lock
from ensemble.base.records import write_json
from ensemble.data.augment import jitter
from ensemble.data.rows import as_input
from ensemble.data.split import Split
from ensemble.data.streaming import in_order, iterate_rows
from ensemble.data.transforms import hflip
from ensemble.metrics.scores import Score
from ensemble.training.members import Member, MemberStack, Run
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


class Alone:
    """A plain model as a :class:`MemberStack` of one: its slices are the model itself."""

    size = 1

    def __init__(self, model: nn.Module):
        self.model = model

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        return _cpu_state(self.model)

    def load_member_state(self, m: int, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def member_optimizer_state(self, state: dict, m: int) -> dict:
        return state

    def stacked_optimizer_state(self, states: list[dict]) -> dict:
        return states[0]

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).reshape(1)

    def member_logits(self, x, batch_size: int, device: torch.device) -> torch.Tensor:
        return predict_logits(self.model, x, batch_size, device).unsqueeze(0)


class Trainer:
    """Trains one :class:`TrainSpec` on in-memory splits, checkpointing into ``workdir``; or (:meth:`of_members`) a
    model made of several members (a pack), each member checkpointed into and written to its own folder."""

    def __init__(self, spec: TrainSpec, data: dict[str, Split], workdir: Path, fingerprint: str, device="cpu",
                 shard: tuple[int, int] = (0, 1)):
        """``shard = (rank, world)``: one of ``world`` data-parallel workers (:mod:`ensemble.cluster.data_parallel`);
        each takes rows ``rank::world`` of every batch, and only rank 0 writes files."""
        self.spec = spec
        self.data = data
        self.members = [Member(spec, workdir, fingerprint)]
        self.device = torch.device(device)
        self.rank, self.world = shard
        self.writes = self.rank == 0
        self.placement: dict = {}  # where it trains (an actor's node, GPUs): in result.json, never in its identity

    @classmethod
    def of_members(cls, spec: TrainSpec, data: dict[str, Split], members: list[Member], device="cpu") -> "Trainer":
        """``spec`` trains the whole (its model a :class:`MemberStack` of ``len(members)``); ``members`` name, role
        and place each member's files, selection, divergence check and ``on_epoch`` records."""
        trainer = cls(spec, data, members[0].workdir, members[0].fingerprint, device)
        trainer.members = members
        return trainer

    # --- finished work on disk (a single model's; each member of a pack is a Member of its own) ---

    def is_finished(self) -> bool:
        return all(member.is_finished() for member in self.members)

    def read_summary(self) -> dict | None:
        return self.members[0].read_summary()

    def load_finished(self) -> TrainResult | None:
        return self.members[0].load_finished(self.data)

    def _all_finished(self) -> list[TrainResult] | None:
        finished = [member.load_finished(self.data) for member in self.members]
        return finished if all(result is not None for result in finished) else None

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
        """Train (or reuse) the one model; ``on_epoch(record)`` after each epoch."""
        (result,) = self.fit_members(None if on_epoch is None else lambda m, record: on_epoch(record))
        return result

    def fit_members(self, on_epoch: Callable[[int, dict], None] | None = None) -> list[TrainResult]:
        """Train (or reuse) every member; ``on_epoch(m, record)`` after each epoch, for each member m."""
        finished = self._all_finished()
        if finished is not None:
            return finished
        for member in self.members:
            member.workdir.mkdir(parents=True, exist_ok=True)
        if not self.writes:  # rank 0 of the same data-parallel group holds the folder
            return self._train_forked(on_epoch)
        # One writer per model folder: another process (a second run, an orphaned actor) waits here or is refused.
        with ExitStack() as locks:
            for member in self.members:
                locks.enter_context(model_folder_lock(member.workdir, member.spec.name))
            # The holder we waited for may have finished this very model.
            return self._all_finished() or self._train_forked(on_epoch)

    def _train_forked(self, on_epoch: Callable[[int, dict], None] | None) -> list[TrainResult]:
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

    def _train(self, on_epoch: Callable[[int, dict], None] | None) -> list[TrainResult]:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            self.data = inputs_on_device(self.data, self.device, free)
        run = self._start()
        patience = self.spec.train.early_stopping_patience
        for epoch in range(run.start_epoch, self.spec.train.epochs):
            if patience is not None and min(run.epochs_since_best) >= patience:
                break
            records = self._train_epoch(run, epoch)
            for m, record in enumerate(records):
                if on_epoch is not None:
                    on_epoch(m, record)
        # Early stopping keeps the weights with the best validation accuracy.
        for m, best in enumerate(run.best):
            if best["state"] is not None:
                run.members.load_member_state(m, best["state"])
        return self._finish(run)

    def _start(self) -> Run:
        """The model, optimiser, schedule and generators, seeded; then the latest checkpoint's state, if any."""
        spec, train_cfg = self.spec, self.spec.train
        check_precision(train_cfg.precision, self.device)
        self._seed_global_rng(spec.seed)
        model = spec.model_factory().to(self.device)
        members = model if isinstance(model, MemberStack) else Alone(model)
        if members.size != len(self.members):
            raise ValueError(f"{spec.name}: a model of {members.size} members trained as {len(self.members)}")
        optimizer = make_optimizer(model, train_cfg)
        run = Run(model, members, optimizer, make_scheduler(optimizer, train_cfg, self._steps_per_epoch()),
                  torch.Generator().manual_seed(spec.seed), spec.objective.to(self.device),
                  [m.constrain for m in model.modules() if callable(getattr(m, "constrain", None))],
                  stepped=data_parallel(prepare(model, train_cfg.channels_last, train_cfg.compile, spec.name),
                                        self.world),
                  scaler=grad_scaler(train_cfg.precision, self.device), train=train_cfg)
        self._resume(run)
        return run

    def _resume(self, run: Run) -> None:
        """From the members' checkpoints at their newest common epoch (a pack's are written one after another; a
        crash between two writes leaves one an epoch ahead, and training is deterministic: the older is as good)."""
        latest = [member.checkpoints.latest() for member in self.members]
        if any(checkpoint is None for checkpoint in latest):
            return
        for member, checkpoint in zip(self.members, latest):
            if checkpoint.get("fingerprint") != member.fingerprint:
                raise CheckpointError(f"{member.checkpoints.root}: checkpoint belongs to another model or config")
        epoch = min(checkpoint["epoch"] for checkpoint in latest)
        checkpoints = [c if c["epoch"] == epoch else member.checkpoint_at(epoch)
                       for c, member in zip(latest, self.members)]
        if any(checkpoint is None for checkpoint in checkpoints):
            return
        try:
            for m, checkpoint in enumerate(checkpoints):
                run.members.load_member_state(m, checkpoint["model"])
            run.optimizer.load_state_dict(run.members.stacked_optimizer_state([c["optimizer"] for c in checkpoints]))
        except (RuntimeError, ValueError, KeyError) as err:
            detail = "; ".join(line.strip() for line in str(err).splitlines()[1:3]) or str(err)
            raise CheckpointError(f"{self.members[0].checkpoints.root}: checkpoint does not fit the model ({detail}); "
                                  "it was saved by another architecture") from None
        first = checkpoints[0]  # the schedule, scaler and generators are the whole's: every member saved the same
        if run.scheduler is not None and first.get("scheduler"):
            run.scheduler.load_state_dict(first["scheduler"])
        run.objective.load_state_dict(first.get("objective", {}))
        if run.scaler is not None and first.get("scaler"):
            run.scaler.load_state_dict(first["scaler"])
        run.generator.set_state(first["generator"])
        torch.set_rng_state(first["torch_rng"])
        run.history, run.best = [c["history"] for c in checkpoints], [c["best"] for c in checkpoints]
        run.start_epoch = epoch
        run.epochs_since_best = [epoch - best["epoch"] if best["epoch"] else 0 for best in run.best]

    def _train_epoch(self, run: Run, epoch: int) -> list[dict]:
        """One pass over the epoch's order, then validation, selection and checkpoints; returns each member's record."""
        spec, eval_bs = self.spec, self.spec.train.eval_batch_size
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
        records = [self._train_record(member, epoch, lr, term_sums, monitored, len(order), m)
                   for m, member in enumerate(self.members)]
        val = run.members.member_logits(self.data["val"].x, eval_bs, self.device)
        for m, record in enumerate(records):
            record["val_accuracy"] = accuracy(val[m], self._labels("val"))
            if run.clip is not None:
                record["grad_clipped"] = run.clipped_share()[m]
            self._select(run, m, record, epoch)
            record.update(epoch_seconds=time.perf_counter() - started, samples_per_second=len(order) / train_seconds)
        if "test" in self.data:
            # For learning curves only: selection and early stopping never look at the test split.
            test = run.members.member_logits(self.data["test"].x, eval_bs, self.device)
            for m, record in enumerate(records):
                record["test_accuracy"] = accuracy(test[m], self._labels("test"))
        optimizer_state = run.optimizer.state_dict() if self.writes else None
        for m, (member, record) in enumerate(zip(self.members, records)):
            run.history[m].append(record)
            if self.writes:
                member.checkpoints.save(epoch + 1, run.checkpoint(m, member.fingerprint, epoch + 1, optimizer_state))
        return records

    @staticmethod
    def _train_record(member: Member, epoch: int, lr: float, term_sums: dict, monitored: set, n: int, m: int) -> dict:
        """Member m's training terms (each term is a vector over the members), checked for divergence."""
        terms = {name: float(total.reshape(-1)[m].double()) / n for name, total in term_sums.items()}
        train_loss = sum(v for name, v in terms.items() if name not in monitored)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"{member.spec.name}: training loss became {train_loss} in epoch {epoch + 1}; "
                                   "lower the learning rate (train.optimizer.lr) or check the inputs")
        return {"epoch": epoch + 1, "train_loss": train_loss, **{f"train_{name}": v for name, v in terms.items()},
                "lr": lr}

    def _select(self, run: Run, m: int, record: dict, epoch: int) -> None:
        if record["val_accuracy"] > run.best[m]["val_accuracy"] or self.spec.train.select == "last":
            run.best[m] = {"val_accuracy": record["val_accuracy"], "epoch": epoch + 1,
                           "state": run.members.member_state(m)}
            run.epochs_since_best[m] = 0
        else:
            run.epochs_since_best[m] += 1

    def _batches(self, run: Run, order: torch.Tensor) -> tuple[dict[str, torch.Tensor], set[str]]:
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
            # A term without a gradient (say, a discriminator's own loss) is logged, not optimised. A term of a
            # model made of members holds one entry per member: their sum gives each member its own gradient.
            monitored.update(name for name, value in terms.items() if not value.requires_grad)
            loss = sum(value.sum() for value in terms.values() if value.requires_grad)
            run.optimizer.zero_grad(set_to_none=True)
            run.step(loss)
            if per_batch_schedule:
                run.scheduler.step()
            for constrain in run.constraints:
                constrain()
            for name, value in terms.items():
                term_sums[name] = term_sums.get(name, 0) + value.detach() * len(idx)
        return term_sums, monitored

    def _finish(self, run: Run) -> list[TrainResult]:
        eval_bs = self.spec.train.eval_batch_size
        logits = {split: run.members.member_logits(self.data[split].x, eval_bs, self.device) for split in self.data}
        return [self._write_result(member, {split: rows[m] for split, rows in logits.items()},
                                   run.members.member_state(m), run.history[m], run.best[m], run.start_epoch)
                for m, member in enumerate(self.members)]

    def _write_result(self, member: Member, logits: dict, state: dict, history: list[dict], best: dict,
                      start_epoch: int) -> TrainResult:
        metrics = {"best_epoch": best["epoch"], "epochs_trained": len(history)}
        for split in self.data:
            labels = self._labels(split)
            score = Score.from_logits(logits[split], labels)
            metrics.update({key: value for key, value in score.fields(f"{split}_").items()
                            if len(labels) or key.endswith(("_accuracy", "_errors"))})
        if self.writes:
            save_verified(state, member.workdir / "model.pt")
            save_verified(logits, member.workdir / "logits.pt")
            write_json(member.workdir / "result.json",
                       {"name": member.spec.name, "role": member.spec.role, "fingerprint": member.fingerprint,
                        "metrics": metrics, "history": history, "resumed_from_epoch": start_epoch,
                        "placement": self.placement})
        return TrainResult(member.spec.name, member.spec.role, state, logits, history, metrics,
                           resumed_from_epoch=start_epoch, placement=dict(self.placement))


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

