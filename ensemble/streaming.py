"""Data that is never materialised: images read from a map-style dataset a batch at a time, inside each actor.

:class:`LazyImages` stands where an in-memory split holds its input tensor: ``x[rows]`` reads and stacks those
examples (uint8 images stay uint8 until the batch reaches the device, where :func:`as_input` scales them), ``len``
and ``shape`` come from the index and the first example, and :meth:`LazyImages.batches` streams an epoch's order
through a ``torch.utils.data.DataLoader`` (``data.num_workers`` processes; pinned memory on CUDA). It pickles as the
dataset's description plus the row indices, so a Ray actor reads the files itself; labels come from the dataset's
``targets`` without decoding any image. ``data.name: imagefolder`` reads ``root/train/<class>/*`` and
``root/test/<class>/*`` this way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import DataError


def as_input(x: torch.Tensor) -> torch.Tensor:
    """What a model sees: uint8 images scaled to [0, 1] floats (on whatever device they already are)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


class _Rows(torch.utils.data.Dataset):
    """Row i of a lazy split: the input of example ``indices[i]`` of the dataset."""

    def __init__(self, dataset, indices: torch.Tensor):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        return read_input(self.dataset, int(self.indices[i]))


def read_input(dataset, index: int) -> torch.Tensor:
    try:
        item = dataset[index][0]
    except Exception as err:  # noqa: BLE001 - an unreadable file: name it
        detail = (str(err).strip().splitlines() or [""])[0]
        raise DataError(f"{_item_name(dataset, index)}: cannot be read ({type(err).__name__}: {detail})") from None
    return item if torch.is_tensor(item) else torch.as_tensor(item)


def _item_name(dataset, index: int) -> str:
    samples = getattr(dataset, "samples", None)
    return str(samples[index][0]) if samples is not None else f"example {index}"


class LazyImages:
    """The inputs of ``dataset`` at ``indices``, read on demand."""

    def __init__(self, dataset, indices: torch.Tensor | None = None, num_workers: int = 0,
                 decoded: str | None = None):
        self.dataset = dataset
        self.indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices).long()
        self.num_workers = num_workers
        self.decoded = decoded  # the dataset decoded once into a .npy file (ensemble.decoded), read instead
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
        """The same rows, read from the dataset decoded once under ``folder`` (:mod:`ensemble.decoded`)."""
        from .decoded import decoded_array

        first = read_input(self.dataset, 0)
        copy = self._copy(self.indices)
        copy.decoded = str(decoded_array(self.dataset, folder, first, self.num_workers))
        return copy

    def _decoded_rows(self, rows: torch.Tensor) -> torch.Tensor:
        if self._array is None:
            from .decoded import open_decoded

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
        loader = torch.utils.data.DataLoader(_Rows(self.dataset, self.indices), batch_sampler=chunks,
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


def worker_message(err: DataError) -> str:
    """A DataError's own line: from a DataLoader worker it arrives wrapped in the worker's traceback."""
    last = (str(err).strip().splitlines() or [""])[-1]
    return last.split("DataError: ", 1)[-1]


def dataset_into(dataset, digest) -> None:
    """What a dataset holds, into ``digest``: each file's path, label, size and modification time (an
    ``ImageFolder``'s ``samples``), or else the dataset's own description."""
    samples = getattr(dataset, "samples", None)
    if samples is not None:
        for path, label in samples:
            stat = Path(path).stat()
            digest.update(f"{path}|{label}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    else:
        digest.update(repr(dataset).encode())


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


def targets_of(dataset) -> torch.Tensor:
    """Labels without decoding an image when the dataset keeps them (``targets``), else by reading each item."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets).long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)


def fingerprint_lazy(x: LazyImages, y: torch.Tensor) -> str:
    digest = hashlib.blake2b(digest_size=8)
    x.fingerprint_into(digest)
    digest.update(y.contiguous().numpy().tobytes())
    return digest.hexdigest()


def decode(path: str) -> torch.Tensor:
    """An image file as a uint8 (C, H, W) tensor (PNG, JPEG, GIF, WEBP): :func:`ensemble.images.decode`."""
    from .images import decode as decode_file

    return decode_file(path)


def image_folder(root: str | Path, part: str):
    """``root/part/<class>/*`` as a torchvision ``ImageFolder`` that decodes to uint8 tensors; one-line errors."""
    from torchvision.datasets import ImageFolder

    folder = Path(root) / part
    if not folder.is_dir():
        raise DataError(f"data.root: {folder.resolve()} is not a folder; the imagefolder dataset needs "
                        f"root/train/<class>/* and root/test/<class>/* images")
    try:
        return ImageFolder(str(folder), loader=decode)
    except FileNotFoundError as err:
        raise DataError(f"data.root: {folder}: {str(err).splitlines()[0]}") from None


def imagefolder_splits(root: str, download: bool):
    """The ``imagefolder`` loader: streamed train and test splits and the class names (from train's folders)."""
    from .data import Split

    train, test = image_folder(root, "train"), image_folder(root, "test")
    missing = sorted(set(test.classes) - set(train.classes))
    if missing:
        raise DataError(f"data.root: {Path(root) / 'test'} has classes {missing} that {Path(root) / 'train'} lacks")
    from .images import check_images

    # Every file's header now, so an odd size or mode is named before anything trains, not found by torch.stack.
    check_images(train.samples[0][0], [path for path, _ in [*train.samples, *test.samples]])
    # Test labels follow train's class numbering.
    test_targets = torch.tensor([train.class_to_idx[test.classes[t]] for t in test.targets], dtype=torch.int64)
    return (Split(LazyImages(train), targets_of(train)), Split(LazyImages(test), test_targets), list(train.classes))
