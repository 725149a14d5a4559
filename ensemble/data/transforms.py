"""Input transforms: per-channel normalisation stored inside the model, and batched augmentation on the device.

:class:`Normalize` is the model's first layer when ``data.normalize`` is on, with the training split's per-channel
mean and standard deviation as buffers, so evaluation, the teacher cache, export and serving all see the same
inputs as training without anyone applying it by hand. Random crops are :func:`ensemble.data.augment.jitter` (zero-pad
by k, crop back: the CIFAR standard ``random_crop: 4``); :func:`hflip` mirrors a random half of the batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ensemble.base.errors import DataError
from ensemble.data.rows import as_input
from ensemble.data.streaming import LazyImages, in_order

STATS_BATCH_BYTES = 2**27


def channel_stats(x: torch.Tensor | LazyImages, batch: int = 8192) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) standard deviation of (N, C, ...) inputs, over every other axis, computed
    a batch at a time in float64: an in-memory tensor, or streamed :class:`~ensemble.data.streaming.LazyImages`, read
    once
    in order (every example, not a sample, so a streamed and an in-memory split give the same statistics)."""
    if len(x.shape) < 2 or not len(x):
        raise DataError(f"data.normalize needs (N, C, ...) inputs with N > 0, got shape {tuple(x.shape)}")
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    # Each batch is held in float64: bound it (~128 MB) however large the images are.
    batch = max(1, min(batch, STATS_BATCH_BYTES // (8 * math.prod(x.shape[1:]))))
    for inputs in in_order(x, batch):
        part = as_input(inputs).double().transpose(0, 1).reshape(channels, -1)
        total += part.sum(1)
        squares += (part * part).sum(1)
        count += part.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-8)
    return mean.tolist(), std.tolist()


class Normalize(nn.Module):
    """``(x − mean_c) / std_c`` per channel c of (N, C, ...) inputs."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        shape = (1, len(mean))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = (1,) * (x.dim() - 2)
        return (x - self.mean.reshape(*self.mean.shape, *extra)) / self.std.reshape(*self.std.shape, *extra)

    def extra_repr(self) -> str:
        return f"channels={self.mean.shape[1]}"


class NormalizedModel(nn.Sequential):
    """``Normalize`` then the network: ``model[0]`` normalises, ``model[1]`` is the network itself."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]):
        super().__init__(Normalize(mean, std), net)


def hflip(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror (left-right) each image of the (N, C, H, W) batch with probability 1/2, drawn from ``generator``."""
    if x.dim() != 4:
        raise DataError(f"data.augment.hflip needs image inputs (N, C, H, W), got shape {tuple(x.shape)}")
    flip = (torch.rand(len(x), generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)
