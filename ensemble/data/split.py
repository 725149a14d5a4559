"""A split (inputs in memory or read lazily, labels in memory), a dataset's splits, and the check every split passes
before a model reads it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from ensemble.base.errors import DataError
from ensemble.data.streaming import LazyImages, fingerprint_lazy


@dataclass
class Split:
    """One split: inputs ``x`` (N, C, H, W) float32 or uint8 images in memory, or
    :class:`ensemble.data.streaming.LazyImages` read on demand; labels ``y`` (N,) int64, always in memory."""

    x: torch.Tensor | LazyImages
    y: torch.Tensor

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise DataError(f"inputs and labels differ in length ({len(self.x)} vs {len(self.y)})")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def lazy(self) -> bool:
        return isinstance(self.x, LazyImages)

    def take(self, rows: torch.Tensor) -> "Split":
        """The examples at ``rows``, still lazy when this split is."""
        return Split(self.x.subset(rows) if self.lazy else self.x[rows], self.y[rows])

    def fingerprint(self) -> str:
        if self.lazy:
            return fingerprint_lazy(self.x, self.y)
        digest = hashlib.blake2b(digest_size=8)
        digest.update(self.x.contiguous().numpy().tobytes())
        digest.update(self.y.contiguous().numpy().tobytes())
        return digest.hexdigest()


@dataclass
class DatasetSplits:
    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    normalization: tuple[list[float], list[float]] | None = None  # the training split's per-channel (mean, std)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def check_split(split: Split, num_classes: int, where: str) -> None:
    """A split every model can read, else one line naming ``where``: examples present, one int64 label per example
    in [0, num_classes), inputs (N, ...) of float or uint8 (images, scaled to [0, 1] where a model reads them),
    finite. Bad data fails here, before any actor starts; :func:`ensemble.data.inputs.as_split` converts a user's
    arrays (numpy or tensors, whole-number float labels) into such a split first."""
    if not len(split):
        raise DataError(f"{where}: has no examples")
    if split.y.dim() != 1:
        raise DataError(f"{where}: labels must be one class index per example, shape (N,), got {tuple(split.y.shape)}")
    if split.y.dtype != torch.int64:
        raise DataError(f"{where}: labels must be int64 class indices, got {split.y.dtype}")
    if int(split.y.min()) < 0 or int(split.y.max()) >= num_classes:
        raise DataError(
            f"{where}: labels must lie in [0, {num_classes - 1}], found {int(split.y.min())}..{int(split.y.max())}"
        )
    if len(split.x.shape) < 2:
        raise DataError(f"{where}: inputs must be (N, features) or (N, C, H, W), got shape {tuple(split.x.shape)}")
    if split.lazy:
        return
    if not (split.x.is_floating_point() or split.x.dtype == torch.uint8):
        raise DataError(f"{where}: inputs must be float or uint8 (images in 0..255), got {split.x.dtype}")
    if split.x.is_floating_point() and not torch.isfinite(split.x).all():
        raise DataError(f"{where}: inputs contain NaN or infinite values")
