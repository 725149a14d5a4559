"""``ensemble.pack: k``: k members of one architecture trained in one actor as one vectorised model.

``torch.func.stack_module_state`` stacks the members' parameters and buffers along a new first dimension, and
``functional_call`` on one member's structure, vmapped over that dimension, runs all k in one pass: one kernel per
layer instead of k, one read of each batch instead of k, one actor and one CUDA context instead of k.

**Batch order.** The k members share one batch order (and one jitter / flip draw per batch), drawn from the pack's
generator, seeded by the first member's seed. Each member keeps its own initial weights (built under its own seed,
exactly as when trained alone) and its own dropout masks (``vmap(randomness="different")``). That is acceptable for
an ensemble: its diversity comes mainly from the random initialisation (Lakshminarayanan et al. 2017; Fort et al.
2019 find different initialisations reach different modes while the order of the data matters less). A packed
member is still not the model the same member would be alone, so its fingerprint names the pack (size and order
seed): neither is ever reused for the other. Member m's loss is its own batch-mean cross-entropy and the k losses
are summed, so each member's gradient, optimiser step (element-wise: SGD, momentum, Adam, weight decay) and
max-norm constraint are exactly what training it alone on the same batches gives.

**From outside nothing changes**: every member has its own folder, checkpoint per epoch (its slice of the
parameters and of the optimiser state), ``result.json``, ``model.pt``, cached logits, MLflow run and validation-based
selection; a rerun resumes the pack from its members' checkpoints.
"""

from __future__ import annotations

import copy
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ensemble.base.checkpoint import CheckpointDir, load_verified
from ensemble.base.errors import ConfigError
from ensemble.base.lock import model_folder_lock
from ensemble.data.augment import jitter
from ensemble.data.rows import as_input
from ensemble.data.streaming import in_order, iterate_rows
from ensemble.data.transforms import hflip
from ensemble.training.objectives import CrossEntropy
from ensemble.training.optim import make_optimizer, make_scheduler
from ensemble.training.precision import autocast, check_precision, grad_scaler
from ensemble.training.trainer import Trainer, TrainResult, TrainSpec, accuracy


def check_packable(specs: list[TrainSpec], models: list[nn.Module]) -> None:
    """One line naming what keeps these members from sharing one vectorised model."""
    first, name = models[0], specs[0].name
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models]
    for spec, model, shape in zip(specs[1:], models[1:], shapes[1:]):
        if shape != shapes[0] or repr(model) != repr(first):
            raise ConfigError(f"ensemble.pack: {spec.name} and {name} have different architectures; packed members "
                              "must share one (set ensemble.pack: 1)")
    plain = CrossEntropy(specs[0].train.label_smoothing).describe()
    if any(spec.train != specs[0].train or spec.objective.describe() != plain
           for spec in specs):
        raise ConfigError("ensemble.pack: packed members need one training config and plain cross-entropy")
    if specs[0].train.compile:
        raise ConfigError("ensemble.pack: train.compile is not supported for packed members (set one of them off)")
    if specs[0].train.grad_clip_norm is not None:
        raise ConfigError("ensemble.pack: train.grad_clip_norm would clip the packed members' gradients as one; "
                          "unset it or set ensemble.pack: 1")
    for module_name, module in first.named_modules():
        if getattr(module, "track_running_stats", False):
            raise ConfigError(f"ensemble.pack: layer {module_name!r} keeps running statistics (batch norm), which a "
                              "vectorised model cannot update; set ensemble.pack: 1")
        if callable(getattr(module, "constrain", None)) and not callable(getattr(module, "constrain_stacked", None)):
            raise ConfigError(f"ensemble.pack: layer {module_name!r} constrains its weights but has no "
                              "constrain_stacked(weight) for a stack of them; set ensemble.pack: 1")


def pack_groups(specs: list[TrainSpec]) -> list[list[int]]:
    """Indices of ``specs`` grouped by pack, in order: a spec without a pack is a group of its own."""
    groups: dict = {}
    for i, spec in enumerate(specs):
        groups.setdefault(spec.pack if spec.pack is not None else ("alone", i), []).append(i)
    return list(groups.values())


def check_packs(specs: list[TrainSpec]) -> None:
    """Before any actor starts: every pack's members can share one vectorised model."""
    for group in pack_groups(specs):
        if len(group) > 1:
            members = [specs[i] for i in group]
            check_packable(members, [spec.model_factory() for spec in members])


class PackedModel:
    """k members as one: ``packed(x)`` maps a batch (B, ...) to every member's logits (k, B, C)."""

    def __init__(self, models: list[nn.Module], device: torch.device):
        self.keys = list(models[0].state_dict())  # a member's state dict order, for its checkpoints
        params, buffers = torch.func.stack_module_state([m.to(device) for m in models])
        self.params = {name: nn.Parameter(p.detach()) for name, p in params.items()}
        self.buffers = buffers
        self.structure = copy.deepcopy(models[0]).to("meta")
        self.constraints = [(module.constrain_stacked, self.params[f"{name}.weight"])
                            for name, module in models[0].named_modules()
                            if callable(getattr(module, "constrain_stacked", None))]
        self.size = len(models)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        def one(params, buffers, inputs):
            return torch.func.functional_call(self.structure, (params, buffers), (inputs,))

        return torch.func.vmap(one, in_dims=(0, 0, None), randomness="different")(self.params, self.buffers, x)

    def train(self, mode: bool = True) -> None:
        self.structure.train(mode)

    def parameter_list(self) -> nn.ParameterList:
        return nn.ParameterList(self.params.values())  # named_parameters order: a member's optimiser order

    @torch.no_grad()
    def constrain(self) -> None:
        for constrain_stacked, weight in self.constraints:
            constrain_stacked(weight)

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        tensors = {**self.params, **self.buffers}
        return {key: tensors[key][m].detach().to("cpu", copy=True) for key in self.keys}

    @torch.no_grad()
    def load_member_state(self, m: int, state: dict[str, torch.Tensor]) -> None:
        tensors = {**self.params, **self.buffers}
        for key in self.keys:
            tensors[key][m].copy_(state[key])

    @torch.no_grad()
    def logits(self, x, batch_size: int, device: torch.device) -> torch.Tensor:
        """(k, N, C) logits of every member for every row of ``x``, in order, in eval mode."""
        self.train(False)
        out = [self(as_input(inputs.to(device))).float().cpu() for inputs in in_order(x, batch_size)]
        return torch.cat(out, dim=1)


def member_optimizer_state(state: dict, m: int) -> dict:
    """Member m's slice of a stacked optimiser's state: what its own optimiser would hold (scalars such as Adam's
    step are shared)."""
    return {"state": {i: {k: (v[m].clone() if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in s.items()}
                      for i, s in state["state"].items()},
            "param_groups": copy.deepcopy(state["param_groups"])}


def stacked_optimizer_state(states: list[dict]) -> dict:
    first = states[0]
    return {"state": {i: {k: (torch.stack([s["state"][i][k] for s in states]) if torch.is_tensor(v) and v.dim() > 0
                              else v) for k, v in first["state"][i].items()}
                      for i in first["state"]},
            "param_groups": first["param_groups"]}


class PackedTrainer:
    """Trains k member specs as one :class:`PackedModel`; each member's files are those :class:`Trainer` writes."""

    def __init__(self, specs: list[TrainSpec], data: dict, workdirs: list[Path], fingerprints: list[str],
                 device="cpu"):
        self.specs, self.data, self.device = specs, data, torch.device(device)
        self.members = [Trainer(s, data, w, f, device) for s, w, f in zip(specs, workdirs, fingerprints)]
        self.train_config = specs[0].train

    def fit(self, on_epoch: Callable[[int, dict], None] | None = None) -> list[TrainResult]:
        finished = [member.load_finished() for member in self.members]
        if all(result is not None for result in finished):
            return finished
        with ExitStack() as locks:
            for member in self.members:
                member.workdir.mkdir(parents=True, exist_ok=True)
                locks.enter_context(model_folder_lock(member.workdir, member.spec.name))
            with torch.random.fork_rng(devices=[]):
                return self._train(on_epoch)

    def _train(self, on_epoch) -> list[TrainResult]:
        run = self._start()
        patience = self.train_config.early_stopping_patience
        for epoch in range(run["start_epoch"], self.train_config.epochs):
            if patience is not None and all(since >= patience for since in run["since_best"]):
                break
            records = self._train_epoch(run, epoch)
            for m, record in enumerate(records):
                if on_epoch is not None:
                    on_epoch(m, record)
        results = []
        for m, member in enumerate(self.members):
            model = member.spec.model_factory()
            model.load_state_dict(run["best"][m]["state"] or run["packed"].member_state(m))
            results.append(member._finish(model.to(self.device), run["history"][m], run["best"][m],
                                          run["start_epoch"]))
        return results

    def _start(self) -> dict:
        check_precision(self.train_config.precision, self.device)
        models = []
        for spec in self.specs:  # each member's initial weights under its own seed, as when trained alone
            torch.random.default_generator.manual_seed(spec.seed)
            models.append(spec.model_factory())
        check_packable(self.specs, models)
        packed = PackedModel(models, self.device)
        optimizer = make_optimizer(packed.parameter_list(), self.train_config)
        k = len(models)
        run = {"packed": packed, "optimizer": optimizer,
               "scheduler": make_scheduler(optimizer, self.train_config, self.members[0]._steps_per_epoch()),
               "generator": torch.Generator().manual_seed(self.specs[0].seed),
               "scaler": grad_scaler(self.train_config.precision, self.device), "start_epoch": 0,
               "history": [[] for _ in range(k)], "since_best": [0] * k,
               "best": [{"val_accuracy": -1.0, "epoch": 0, "state": None} for _ in range(k)]}
        self._resume(run)
        return run

    def _resume(self, run: dict) -> None:
        """From the members' checkpoints at their newest common epoch (written together; a crash between two
        writes leaves one member an epoch ahead, and training is deterministic, so the older epoch is as good)."""
        dirs = [member.checkpoints for member in self.members]
        latest = [d.latest() for d in dirs]
        if any(c is None or c.get("fingerprint") != m.fingerprint for c, m in zip(latest, self.members)):
            return
        epoch = min(c["epoch"] for c in latest)
        checkpoints = [c if c["epoch"] == epoch else _at(d, epoch) for c, d in zip(latest, dirs)]
        if any(c is None for c in checkpoints):
            return
        for m, checkpoint in enumerate(checkpoints):
            run["packed"].load_member_state(m, checkpoint["model"])
        run["optimizer"].load_state_dict(stacked_optimizer_state([c["optimizer"] for c in checkpoints]))
        first = checkpoints[0]
        if run["scheduler"] is not None and first.get("scheduler"):
            run["scheduler"].load_state_dict(first["scheduler"])
        if run["scaler"] is not None and first.get("scaler"):
            run["scaler"].load_state_dict(first["scaler"])
        run["generator"].set_state(first["generator"])
        torch.set_rng_state(first["torch_rng"])
        run["history"] = [c["history"] for c in checkpoints]
        run["best"] = [c["best"] for c in checkpoints]
        run["since_best"] = [epoch - b["epoch"] if b["epoch"] else 0 for b in run["best"]]
        run["start_epoch"] = epoch

    def _train_epoch(self, run: dict, epoch: int) -> list[dict]:
        started = time.perf_counter()
        packed, spec, cfg = run["packed"], self.specs[0], self.train_config
        n_train = len(self.data["train"])
        order = (spec.sampler.epoch_order(n_train, run["generator"]) if spec.sampler is not None
                 else torch.randperm(n_train, generator=run["generator"]))
        ce_sums = self._batches(run, order)
        lr = run["optimizer"].param_groups[0]["lr"]
        if run["scheduler"] is not None and cfg.scheduler.name != "onecycle":
            run["scheduler"].step()
        train_seconds = time.perf_counter() - started
        val = packed.logits(self.data["val"].x, cfg.eval_batch_size, self.device)
        test = packed.logits(self.data["test"].x, cfg.eval_batch_size, self.device) if "test" in self.data else None
        records = []
        for m, member in enumerate(self.members):
            ce = float(ce_sums[m]) / len(order)
            record = {"epoch": epoch + 1, "train_loss": ce, "train_ce": ce,
                      "val_accuracy": accuracy(val[m], member._labels("val")), "lr": lr}
            self._select(run, m, record, epoch)
            record.update(epoch_seconds=time.perf_counter() - started, samples_per_second=len(order) / train_seconds)
            if test is not None:
                record["test_accuracy"] = accuracy(test[m], member._labels("test"))
            run["history"][m].append(record)
            records.append(record)
        self._checkpoint(run, epoch + 1)
        return records

    def _select(self, run: dict, m: int, record: dict, epoch: int) -> None:
        if record["val_accuracy"] > run["best"][m]["val_accuracy"] or self.train_config.select == "last":
            run["best"][m] = {"val_accuracy": record["val_accuracy"], "epoch": epoch + 1,
                              "state": run["packed"].member_state(m)}
            run["since_best"][m] = 0
        else:
            run["since_best"][m] += 1

    def _batches(self, run: dict, order: torch.Tensor) -> torch.Tensor:
        """One epoch's steps; returns each member's example-weighted sum of its batch-mean cross-entropy."""
        packed, spec, cfg = run["packed"], self.specs[0], self.train_config
        x_train, y_train = self.data["train"].x, self.members[0]._labels("train")
        ce_sums = torch.zeros(packed.size)
        packed.train(True)
        for idx, inputs in iterate_rows(x_train, order, cfg.batch_size, pin_memory=self.device.type == "cuda"):
            xb = as_input(inputs.to(self.device, non_blocking=True))
            if spec.jitter:
                xb = jitter(xb, spec.jitter, run["generator"])
            if spec.hflip:
                xb = hflip(xb, run["generator"])
            yb = y_train[idx].to(self.device, non_blocking=True)
            with autocast(cfg.precision, self.device):
                logits = packed(xb)
            per_member = F.cross_entropy(logits.float().flatten(0, 1), yb.repeat(packed.size), reduction="none",
                                         label_smoothing=cfg.label_smoothing).view(packed.size, -1).mean(dim=1)
            run["optimizer"].zero_grad(set_to_none=True)
            _step(run, per_member.sum())
            if cfg.scheduler.name == "onecycle":
                run["scheduler"].step()
            packed.constrain()
            ce_sums += per_member.detach().cpu() * len(idx)
        return ce_sums

    def _checkpoint(self, run: dict, epoch: int) -> None:
        optimizer_state = run["optimizer"].state_dict()
        for m, member in enumerate(self.members):
            member.checkpoints.save(epoch, {
                "fingerprint": member.fingerprint, "epoch": epoch, "model": run["packed"].member_state(m),
                "optimizer": member_optimizer_state(optimizer_state, m),
                "scheduler": run["scheduler"].state_dict() if run["scheduler"] is not None else {},
                "generator": run["generator"].get_state(), "objective": {}, "torch_rng": torch.get_rng_state(),
                "history": run["history"][m], "best": run["best"][m],
                "scaler": run["scaler"].state_dict() if run["scaler"] is not None else {}})


def _step(run: dict, loss: torch.Tensor) -> None:
    if run["scaler"] is None:
        loss.backward()
        run["optimizer"].step()
        return
    run["scaler"].scale(loss).backward()
    run["scaler"].step(run["optimizer"])
    run["scaler"].update()


def _at(checkpoints: CheckpointDir, epoch: int) -> dict | None:

    return load_verified(checkpoints.root / f"epoch_{epoch:04d}.pt")
