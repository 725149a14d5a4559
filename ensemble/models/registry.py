"""Model registry: factories by name, ``factory(input_shape, num_classes, **params) -> nn.Module``.

Users add their own with ``@register_model("name")``. A module (or submodule) may define ``constrain()``;
the trainer calls it after every optimiser step (used for max-norm weight constraints).
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ensemble.base.checkpoint import state_fingerprint
from ensemble.base.errors import ConfigError, ModelError
from ensemble.base.registry import Registry
from ensemble.data.transforms import NormalizedModel

MODELS = Registry("model")


def register_model(name: str):
    """``@register_model("mine")`` on ``factory(input_shape, num_classes, **params) -> nn.Module``."""
    return MODELS.register(name)


def check_model_params(name: str, params: dict, factory: Callable[..., nn.Module] | None = None) -> None:
    factory = factory or MODELS.get(name)
    if factory is None:
        raise ValueError(MODELS.unknown(name))
    signature = inspect.signature(factory)
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    accepted = [p for p in signature.parameters if p not in ("input_shape", "num_classes")]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"model {name!r} has no parameter {unknown[0]!r}; it accepts {accepted}")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, params: dict | None = None,
                factory: Callable[..., nn.Module] | None = None) -> nn.Module:
    """``factory`` (default: the one registered as ``name``) is passed where the registry may lack it: a Ray actor."""
    try:
        check_model_params(name, params or {}, factory)
        return (factory or MODELS[name])(tuple(input_shape), num_classes, **(params or {}))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"model {name!r}: {err}") from None


def resolved_params(name: str, params: dict, factory: Callable[..., nn.Module] | None = None) -> dict:
    """Every parameter the registered factory receives, defaults included: a changed default is a changed model."""
    try:
        bound = inspect.signature(factory or MODELS[name]).bind(None, None, **params)
    except (KeyError, TypeError):  # unknown name or parameter: build_model reports it
        return dict(params)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in ("input_shape", "num_classes")}


@dataclass
class RegisteredModel:
    """A picklable factory for a registry model; ``identity()`` names everything that builds it.

    Bump ``version`` when the registered code changes in a way its parameters do not show.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    params: dict = field(default_factory=dict)
    version: int | str | None = None
    normalize: tuple[list[float], list[float]] | None = None  # per-channel (mean, std): a Normalize first layer

    @classmethod
    def from_config(cls, config, input_shape, num_classes: int, normalize=None) -> RegisteredModel:
        """From a :class:`ensemble.schema.sections.ModelConfig` (name, params, version), with
        ``DatasetSplits.normalization``."""
        return cls(config.name, tuple(input_shape), num_classes, dict(config.params), getattr(config, "version", None),
                   normalize)

    def __getstate__(self) -> dict:
        # The registered factory travels with its name: a model registered by a plugin that only the driver
        # imported builds in a Ray actor too (a plugin's functions are pickled by value, see distill.import_plugin).
        return {**self.__dict__, "_registered": self._registered_factory()}

    def _registered_factory(self) -> Callable[..., nn.Module] | None:
        return self.__dict__.get("_registered") or MODELS.get(self.name)

    def __call__(self) -> nn.Module:
        net = build_model(self.name, self.input_shape, self.num_classes, self.params, self._registered_factory())
        if self.normalize is None:
            return net

        return NormalizedModel(net, *self.normalize)

    def identity(self) -> dict:
        return {"registered": self.name, "input_shape": list(self.input_shape), "num_classes": self.num_classes,
                "params": resolved_params(self.name, self.params, self._registered_factory()), "version": self.version,
                "normalize": None if self.normalize is None else [list(v) for v in self.normalize]}


def factory_identity(factory: Any) -> Any:
    """A factory's own ``identity()``, or those of the factories a ``functools.partial`` wraps (a specialist's
    generalist, a guided student's student); None when it has none."""
    if isinstance(factory, nn.Module):  # a module argument is named by its weights, not by an attribute
        return None
    identity = getattr(factory, "identity", None)
    if callable(identity):
        return identity()
    if isinstance(factory, functools.partial):
        inner = [factory_identity(a) for a in (factory.func, *factory.args, *factory.keywords.values()) if callable(a)]
        inner = [i for i in inner if i is not None]
        return {"wraps": inner} if inner else None
    return None


def model_identity(factory: Callable[[], nn.Module], seed: int) -> dict:
    """Everything that defines the model a factory builds: its repr, its factory's identity and ``version``, and its
    initial weights built under ``seed`` as :meth:`ensemble.training.trainer.Trainer.fit` does, which catch what neither
    shows (a custom init, a changed default). The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also reseed (and so change) any CUDA generator.
        torch.random.default_generator.manual_seed(seed)
        model = factory()
    return {"repr": repr(model), "weights": state_fingerprint(model.state_dict()),
            "factory": factory_identity(factory), "version": _version(factory)}


def _version(factory: Any) -> Any:
    version = getattr(factory, "version", None)
    return None if callable(version) else version  # a method called version is not a version number


def check_output_width(model: nn.Module, input_shape: tuple[int, ...], num_classes: int, where: str) -> None:
    """Fail before training if the model does not map one input to ``num_classes`` logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *input_shape)))
    except Exception as err:  # noqa: BLE001 - any failure means the model does not fit the data
        raise ModelError(f"{where}: the model fails on inputs of shape {tuple(input_shape)}: {err}") from None
    finally:
        model.train(was_training)
    if out.dim() != 2 or out.shape[1] != num_classes:
        raise ModelError(
            f"{where}: the model outputs shape {tuple(out.shape[1:])} per example, expected ({num_classes},) "
            f"for {num_classes} classes"
        )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class MaxNormLinear(nn.Linear):
    """A linear layer whose incoming weight vector per unit is rescaled to norm ≤ ``max_norm`` after each step."""

    def __init__(self, in_features: int, out_features: int, max_norm: float | None = None):
        super().__init__(in_features, out_features)
        self.max_norm = max_norm

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, max_norm={self.max_norm}"

    @torch.no_grad()
    def constrain(self) -> None:
        if self.max_norm is not None:
            self.weight.copy_(torch.renorm(self.weight, p=2, dim=0, maxnorm=self.max_norm))

    @torch.no_grad()
    def constrain_stacked(self, weight: torch.Tensor) -> None:
        """The same constraint on a stack (k, out, in) of this layer's weights (``ensemble.pack``)."""
        if self.max_norm is not None:
            rows = weight.view(-1, weight.shape[-1])
            rows.copy_(torch.renorm(rows, p=2, dim=0, maxnorm=self.max_norm))


@register_model("mlp")
def mlp(
    input_shape,
    num_classes,
    hidden: list[int] = (1200, 1200),
    dropout: float = 0.0,
    input_dropout: float = 0.0,
    max_norm: float | None = None,
) -> nn.Module:
    """Fully connected ReLU net, as in the paper's MNIST experiments (dropout and max-norm optional)."""
    if not 0 <= dropout < 1 or not 0 <= input_dropout < 1:
        raise ValueError("dropout and input_dropout must lie in [0, 1)")
    layers: list[nn.Module] = [nn.Flatten()]
    if input_dropout:
        layers.append(nn.Dropout(input_dropout))
    width = math.prod(input_shape)
    for units in hidden:
        layers += [MaxNormLinear(width, units, max_norm), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = units
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register_model("cnn")
def cnn(input_shape, num_classes, channels: list[int] = (32, 64), hidden: int = 128, dropout: float = 0.0) -> nn.Module:
    """A small conv net: [conv3x3-ReLU-maxpool] per entry of ``channels``, then one hidden layer."""
    in_channels, height, width = input_shape
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels, height, width = out_channels, height // 2, width // 2
    layers += [nn.Flatten(), nn.Linear(in_channels * height * width, hidden), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)


@register_model("resnet18")
def resnet18(input_shape, num_classes) -> nn.Module:
    """torchvision's ResNet-18 for small images: 3x3 stride-1 stem, no max-pool, any channel count."""
    import torchvision

    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
