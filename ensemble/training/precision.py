"""Mixed precision, memory format and compilation for the trainer (``train.precision``, ``channels_last``,
``compile``): autocast around each step, a gradient scaler for fp16, and torch.compile with an eager fallback."""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn

from ensemble.base.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA GPU (this model trains on {device.type}); "
                          "use bf16 or fp32")


def autocast(precision: str, device: torch.device):
    """The forward pass and loss in ``precision`` (weights, gradients and the optimiser stay fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device):
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def prepare(model: nn.Module, channels_last: bool, compile_model: bool, name: str):
    """The module the training steps call: ``model`` itself, in channels-last memory format and/or compiled. The
    compiled module shares ``model``'s parameters, so checkpoints keep saving ``model``'s plain state dict."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if not compile_model:
        return model
    return CompiledOrEager(model, name)


class CompiledOrEager:
    """Calls the compiled model; if compiling fails (at the first call, where torch.compile does its work), warns
    once and calls the eager model from then on. Attributes are the model's (an objective may read its layers)."""

    def __init__(self, model: nn.Module, name: str):
        self.model, self.name = model, name
        try:
            self.compiled = torch.compile(model)
        except Exception as err:  # noqa: BLE001 - an unsupported platform: train eagerly, say so once
            self._fall_back(err)

    def _fall_back(self, err: Exception) -> None:
        warnings.warn(f"{self.name}: train.compile is not supported here ({type(err).__name__}: "
                      f"{(str(err).strip().splitlines() or [''])[0]}); training eagerly", stacklevel=3)
        self.compiled = None

    def __call__(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - dynamo/inductor failures surface on the first call
                self._fall_back(err)
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.model, name)


def to_memory_format(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
