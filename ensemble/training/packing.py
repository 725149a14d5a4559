"""``ensemble.pack: k``: k members of one architecture trained in one actor as one vectorised model.

**A pack is a model.** ``torch.func.stack_module_state`` stacks the members' parameters and buffers along a new
first dimension into one ``nn.Module`` (:class:`PackedModel`), whose forward is ``functional_call`` on one
member's structure vmapped over that dimension: one kernel per layer instead of k, one read of each batch instead of
k, one actor and one CUDA context instead of k. It is trained by the one loop, :class:`ensemble.training.trainer.
Trainer`, which asks it for each member's slice (:class:`ensemble.training.members.MemberStack`) at the edges: each
member's checkpoint, ``result.json``, ``model.pt``, cached logits and MLflow run are its own, in its own folder,
exactly as when it trains alone, and a rerun resumes the pack from its members' checkpoints. Every feature of the
loop (precision, schedules, selection, early stopping, divergence check, gradient clipping, seeding) applies to a
pack; what cannot is refused in :func:`check_packable`.

**Batch order.** The k members share one batch order (and one jitter / flip draw per batch), drawn from the pack's
generator, seeded by the first member's seed. Each member keeps its own initial weights (built under its own seed,
exactly as when trained alone) and its own dropout masks (``vmap(randomness="different")``). That is acceptable for
an ensemble: its diversity comes mainly from the random initialisation (Lakshminarayanan et al. 2017; Fort et al.
2019 find different initialisations reach different modes while the order of the data matters less). A packed
member is still not the model the same member would be alone, so its fingerprint names the pack (size and order
seed): neither is ever reused for the other. Member m's loss is its own batch-mean cross-entropy and the objective
returns the k losses as one vector, which the loop sums, so each member's gradient, optimiser step (element-wise:
SGD, momentum, Adam, weight decay), gradient clipping (by the norm of its own slice) and max-norm constraint are
exactly what training it alone on the same batches gives. Under fp16 one member's overflowing gradient makes the
shared gradient scaler skip that step for the whole pack.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ensemble.base.errors import ConfigError
from ensemble.data.rows import as_input
from ensemble.data.streaming import in_order
from ensemble.training.members import Member
from ensemble.training.objectives import CrossEntropy
from ensemble.training.spec import sampler_identity
from ensemble.training.trainer import Trainer, TrainSpec

# Options of the one loop that a vectorised stack cannot honour, and why: the one place packs refuse them.
UNPACKABLE = {
    "compile": "is not supported for packed members",
    "channels_last": "does not apply to a vectorised stack of weights",
}


def check_packable(specs: list[TrainSpec], models: list[nn.Module]) -> None:
    """One line naming what keeps these members from sharing one vectorised model."""
    first, name = models[0], specs[0].name
    shapes = [{k: tuple(v.shape) for k, v in m.state_dict().items()} for m in models]
    for spec, model, shape in zip(specs[1:], models[1:], shapes[1:]):
        if shape != shapes[0] or repr(model) != repr(first):
            raise ConfigError(f"ensemble.pack: {spec.name} and {name} have different architectures; packed members "
                              "must share one (set ensemble.pack: 1)")
    plain = CrossEntropy(specs[0].train.label_smoothing).describe()
    if any(_shared(spec) != _shared(specs[0]) or spec.objective.describe() != plain for spec in specs):
        raise ConfigError("ensemble.pack: packed members need one training config and plain cross-entropy")
    for option, why in UNPACKABLE.items():
        if getattr(specs[0].train, option):
            raise ConfigError(f"ensemble.pack: train.{option} {why}; set it off or set ensemble.pack: 1")
    for module_name, module in first.named_modules():
        if getattr(module, "track_running_stats", False):
            raise ConfigError(f"ensemble.pack: layer {module_name!r} keeps running statistics (batch norm), which a "
                              "vectorised model cannot update; set ensemble.pack: 1")
        if callable(getattr(module, "constrain", None)) and not callable(getattr(module, "constrain_stacked", None)):
            raise ConfigError(f"ensemble.pack: layer {module_name!r} constrains its weights but has no "
                              "constrain_stacked(weight) for a stack of them; set ensemble.pack: 1")


def _shared(spec: TrainSpec) -> tuple:
    """What a pack's members train with together: one config, one augmentation, one sampler, one label map."""
    target_map = None if spec.target_map is None else spec.target_map.tolist()
    return spec.train, spec.jitter, spec.hflip, sampler_identity(spec.sampler), target_map


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


def pack_trainer(specs: list[TrainSpec], data: dict, workdirs: list[Path], fingerprints: list[str],
                 device="cpu") -> Trainer:
    """The one :class:`Trainer` for a pack: it trains the stacked members as one model and writes each member's
    slice into its own folder; ``fit_members(on_epoch)`` returns each member's result."""
    first = specs[0]
    whole = replace(first, name=first.pack or first.name, model_factory=partial(stack_members, specs),
                    objective=PackedCrossEntropy(first.train.label_smoothing))
    members = [Member(spec, Path(w), f) for spec, w, f in zip(specs, workdirs, fingerprints)]
    return Trainer.of_members(whole, data, members, device)


def stack_members(specs: list[TrainSpec]) -> "PackedModel":
    """Each member built under its own seed, as when it trains alone, then stacked."""
    models = []
    for spec in specs:
        with torch.random.fork_rng(devices=[]):  # the caller's (the run's seeded) generator is left as it was
            torch.random.default_generator.manual_seed(spec.seed)
            models.append(spec.model_factory())
    check_packable(specs, models)
    return PackedModel(models)


class PackedCrossEntropy(CrossEntropy):
    """Every member's own batch-mean cross-entropy, one entry per member: ``{"ce": (k,)}``."""

    def __call__(self, model, x, y, idx):
        logits = model(x)  # (k, B, C)
        k = logits.shape[0]
        per_example = F.cross_entropy(logits.float().flatten(0, 1), y.repeat(k), reduction="none",
                                      label_smoothing=self.label_smoothing)
        return logits, {"ce": per_example.view(k, -1).mean(dim=1)}


class PackedModel(nn.Module):
    """k members as one module: ``packed(x)`` maps a batch (B, ...) to every member's logits (k, B, C). Its
    parameters are the stacked (k, ...) tensors, in a member's parameter order (so a member's optimiser state is
    a slice of the pack's); a :class:`ensemble.training.members.MemberStack`."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.size = len(models)
        self.keys = list(models[0].state_dict())  # a member's state dict order, for its checkpoints
        params, buffers = torch.func.stack_module_state(models)
        # A member's dotted names cannot name a module's own tensors: each is registered under a flat name.
        self.flat = {key: key.replace(".", "__") for key in [*params, *buffers]}
        for key, value in params.items():
            self.register_parameter(self.flat[key], nn.Parameter(value.detach()))
        for key, value in buffers.items():
            self.register_buffer(self.flat[key], value)
        self.param_keys, self.buffer_keys = list(params), list(buffers)
        # Held in a tuple, not registered: modules() is the pack alone, whose constrain() covers the stack.
        self.structure = (copy.deepcopy(models[0]).to("meta"),)
        self.constrained = [(module.constrain_stacked, self.flat[f"{name}.weight"])
                            for name, module in self.structure[0].named_modules()
                            if callable(getattr(module, "constrain_stacked", None))]

    def _stacked(self, key: str) -> torch.Tensor:
        return getattr(self, self.flat[key])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        structure = self.structure[0]

        def one(params, buffers, inputs):
            return torch.func.functional_call(structure, (params, buffers), (inputs,))

        params = {key: self._stacked(key) for key in self.param_keys}
        buffers = {key: self._stacked(key) for key in self.buffer_keys}
        return torch.func.vmap(one, in_dims=(0, 0, None), randomness="different")(params, buffers, x)

    def train(self, mode: bool = True) -> "PackedModel":
        super().train(mode)
        self.structure[0].train(mode)  # dropout reads the structure's mode
        return self

    @torch.no_grad()
    def constrain(self) -> None:
        for constrain_stacked, flat in self.constrained:
            constrain_stacked(getattr(self, flat))

    def member_state(self, m: int) -> dict[str, torch.Tensor]:
        return {key: self._stacked(key)[m].detach().to("cpu", copy=True) for key in self.keys}

    @torch.no_grad()
    def load_member_state(self, m: int, state: dict[str, torch.Tensor]) -> None:
        for key in self.keys:
            self._stacked(key)[m].copy_(state[key])

    def member_optimizer_state(self, state: dict, m: int) -> dict:
        """Scalars such as Adam's step are shared by the members."""
        return {"state": {i: {k: (v[m].clone() if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in s.items()}
                          for i, s in state["state"].items()},
                "param_groups": copy.deepcopy(state["param_groups"])}

    def stacked_optimizer_state(self, states: list[dict]) -> dict:
        first = states[0]
        return {"state": {i: {k: (torch.stack([s["state"][i][k] for s in states])
                                  if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in first["state"][i].items()}
                          for i in first["state"]},
                "param_groups": first["param_groups"]}

    def clip_grad_norm(self, max_norm: float) -> torch.Tensor:
        """``clip_grad_norm_`` of each member's own slice: its norm, and the same ``max_norm / (norm + 1e-6)``."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(self.size)
        norms = torch.stack([g.detach().flatten(1).float().pow(2).sum(dim=1) for g in grads]).sum(dim=0).sqrt()
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))
        return norms

    @torch.no_grad()
    def member_logits(self, x, batch_size: int, device: torch.device) -> torch.Tensor:
        was_training = self.training
        self.train(False)
        out = [self(as_input(inputs.to(device))).float().cpu() for inputs in in_order(x, batch_size)]
        self.train(was_training)
        return torch.cat(out, dim=1) if out else torch.empty(self.size, 0)
