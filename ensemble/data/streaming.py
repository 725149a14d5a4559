"""Data that is never materialised: images read from a map-style dataset a batch at a time, inside each actor.

:class:`LazyImages` stands where an in-memory split holds its input tensor: ``x[rows]`` reads and stacks those
examples (uint8 images stay uint8 until the batch reaches the device, where :func:`as_input` scales them), ``len``
and ``shape`` come from the index and the first example, and :meth:`LazyImages.batches` streams an epoch's order
through a ``torch.utils.data.DataLoader`` (``data.num_workers`` processes; pinned memory on CUDA). It pickles as the
dataset's description plus the row indices, so a Ray actor reads the files itself; labels come from the dataset's
``targets`` without decoding any image. ``data.name: imagefolder`` reads ``root/train/<class>/*`` and
``root/test/<class>/*`` this way."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ensemble.base.errors import DataError
from ensemble.data.decoded import decoded_array, open_decoded
from ensemble.data.rows import Rows, dataset_into, read_input, worker_message


class LazyImages:
    """The inputs of ``dataset`` at ``indices``, read on demand."""

    def __init__(self, dataset, indices: torch.Tensor | None = None, num_workers: int = 0,
                 decoded: str | None = None):
        self.dataset = dataset
        self.indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices).long()
        self.num_workers = num_workers
        self.decoded = decoded  # the dataset decoded once into a .npy file (ensemble.data.decoded), read instead
        self._shape: tuple[int, ...] | None = None
        self._array = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}  # each process maps the decoded file itself

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, ...]:
        if self._shape is None:
            self._shape = tuple(read_input(self.dataset, int(self.indices[0])).shape) if len(self) else ()
        return (len(self), *self._shape)

    def _copy(self, indices: torch.Tensor) -> "LazyImages":
        return LazyImages(self.dataset, indices, self.num_workers, self.decoded)

    def subset(self, rows: torch.Tensor) -> "LazyImages":
        return self._copy(self.indices[rows])

    def concat(self, other: "LazyImages") -> "LazyImages":
        if other.dataset is not self.dataset:
            raise DataError("cannot join lazy splits of two different datasets")
        return self._copy(torch.cat([self.indices, other.indices]))

    def with_decoded(self, folder: str | Path) -> "LazyImages":
        """The same rows, read from the dataset decoded once under ``folder`` (:mod:`ensemble.data.decoded`)."""

        first = read_input(self.dataset, 0)
        copy = self._copy(self.indices)
        copy.decoded = str(decoded_array(self.dataset, folder, first, self.num_workers))
        return copy

    def _decoded_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if self._array is None:

            self._array = open_decoded(self.decoded)
        return torch.from_numpy(np.ascontiguousarray(self._array[self.indices[rows].numpy()]))

    def __getitem__(self, rows) -> torch.Tensor:
        if isinstance(rows, slice):
            rows = torch.arange(len(self))[rows]
        rows = torch.as_tensor(rows)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().flatten()
        if not len(rows):
            return torch.empty(0, *self.shape[1:])
        if self.decoded is not None:
            return self._decoded_rows(rows)
        return torch.stack([read_input(self.dataset, int(self.indices[r])) for r in rows.tolist()])

    def batches(self, order: torch.Tensor, batch_size: int, pin_memory: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(rows, inputs)`` for consecutive ``batch_size`` chunks of ``order``, read by the DataLoader's workers
        (or indexed in the decoded array, which needs no workers)."""
        if self.decoded is not None:
            for i in range(0, len(order), batch_size):
                rows = order[i : i + batch_size]
                inputs = self._decoded_rows(rows)
                yield rows, inputs.pin_memory() if pin_memory else inputs
            return
        chunks = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
        loader = torch.utils.data.DataLoader(Rows(self.dataset, self.indices), batch_sampler=chunks,
                                             num_workers=self.num_workers, pin_memory=pin_memory,
                                             persistent_workers=False)
        try:
            for chunk, inputs in zip(chunks, loader):
                yield torch.tensor(chunk), inputs
        except DataError as err:
            raise DataError(worker_message(err)) from None

    def fingerprint_into(self, digest) -> None:
        """The dataset's files (path, size, modification time) or its own description, and the rows."""
        dataset_into(self.dataset, digest)
        digest.update(self.indices.numpy().tobytes())


def iterate_rows(x, order: torch.Tensor, batch_size: int, pin_memory: bool = False
                 ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows, inputs)`` batch by batch, for an in-memory tensor or :class:`LazyImages`."""
    if isinstance(x, LazyImages):
        yield from x.batches(order, batch_size, pin_memory)
        return
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield rows, x[rows]


def in_order(x, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[torch.Tensor]:
    """Rows ``start..stop`` of ``x`` batch by batch, in order: slices (views, no copy) of an in-memory tensor, or
    reads of :class:`LazyImages` through its DataLoader."""
    stop = len(x) if stop is None else stop
    if isinstance(x, LazyImages):
        yield from (inputs for _, inputs in x.batches(torch.arange(start, stop), batch_size))
        return
    for i in range(start, stop, batch_size):
        yield x[i : min(i + batch_size, stop)]


def fingerprint_lazy(x: LazyImages, y: torch.Tensor) -> str:
    digest = hashlib.blake2b(digest_size=8)
    x.fingerprint_into(digest)
    digest.update(y.contiguous().numpy().tobytes())
    return digest.hexdigest()
