"""Reading one example of a map-style dataset, as a model sees it; the description of a dataset that names it."""

from __future__ import annotations

from pathlib import Path

import torch

from ensemble.base.errors import DataError


def as_input(x: torch.Tensor) -> torch.Tensor:
    """What a model sees: uint8 images scaled to [0, 1] floats (on whatever device they already are)."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


class Rows(torch.utils.data.Dataset):
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


def targets_of(dataset) -> torch.Tensor:
    """Labels without decoding an image when the dataset keeps them (``targets``), else by reading each item."""
    targets = getattr(dataset, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets).long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))], dtype=torch.int64)
