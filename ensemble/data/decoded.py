"""``data.decoded_cache``: decode a streamed dataset's images once into a memory-mapped array, then read from it.

Decoding a PNG or JPEG costs more than a small model's whole training step on that image, and a streamed epoch
decodes every image again. With ``data.decoded_cache: FOLDER`` each streamed dataset is decoded once, in order, into
``FOLDER/decoded-<hash>/images.npy`` (uint8 stays uint8), and every later read, in every actor and every run, is an
index into that file through the operating system's page cache: a dataset larger than RAM is paged in and out,
never loaded whole. The hash covers everything that defines the array (each file's path, label, size and
modification time, or the dataset's description, and the image shape), so an edited, added or removed image names
a new file instead of reusing a stale one. The file is written under a temporary name and renamed once complete,
while the folder is locked, so concurrent runs decode it once and nobody reads half a file.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ensemble.base.errors import DataError
from ensemble.base.lock import FolderLock
from ensemble.base.records import report_damaged, writing
from ensemble.data.rows import Rows, dataset_into, worker_message

log = logging.getLogger(__name__)

ARRAY_FILE = "images.npy"
DECODE_WAIT_SECONDS = 6 * 3600.0  # another process decoding the same dataset: wait for it rather than decode twice


def dataset_key(dataset, item_shape: tuple[int, ...]) -> str:
    """A hash of what the decoded array holds: every file (path, label, size, mtime) or the dataset's repr."""

    digest = hashlib.blake2b(digest_size=10)
    dataset_into(dataset, digest)
    digest.update(f"{len(dataset)}|{tuple(item_shape)}".encode())
    return digest.hexdigest()


def decoded_array(dataset, folder: str | Path, first_item: torch.Tensor, num_workers: int = 0) -> Path:
    """The path of ``dataset`` decoded into a ``.npy`` array under ``folder`` (built now unless it exists)."""
    shape = tuple(first_item.shape)
    target = Path(folder) / f"decoded-{dataset_key(dataset, shape)}"
    path = target / ARRAY_FILE
    if _whole(path, len(dataset), shape):
        return path
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"data.decoded_cache: cannot create {target} ({err.strerror})") from None
    with FolderLock(target, "decoding images", wait=DECODE_WAIT_SECONDS, label="data.decoded_cache",
                    advice="wait for it to finish"):
        if not _whole(path, len(dataset), shape):  # another process may have finished it while this one waited
            _decode_into(dataset, path, shape, first_item.numpy().dtype, num_workers)
    return path


def _whole(path: Path, rows: int, shape: tuple[int, ...]) -> bool:
    """The array is there with every row; a truncated or damaged one is reported and decoded again."""
    if not path.exists():
        return False
    try:
        found = np.load(path, mmap_mode="r", allow_pickle=False).shape
    except (OSError, ValueError, EOFError) as err:
        report_damaged(path, " ".join(str(err).split()), "the images are decoded again")
        return False
    if found != (rows, *shape):
        report_damaged(path, f"shape {found}, not {(rows, *shape)}", "the images are decoded again")
        return False
    return True


def _decode_into(dataset, path: Path, shape: tuple[int, ...], dtype, num_workers: int) -> None:

    n = len(dataset)
    log.info("decoding %d images once into %s", n, path)
    partial = path.with_name(f".{ARRAY_FILE}.partial")
    with writing(partial):
        array = np.lib.format.open_memmap(partial, mode="w+", dtype=dtype, shape=(n, *shape))
        # Reserve the blocks now: a full disk is then an ENOSPC here, not a SIGBUS when a page of the map is written.
        _reserve(partial)
    loader = torch.utils.data.DataLoader(Rows(dataset, torch.arange(n)), batch_size=1024, num_workers=num_workers,
                                         collate_fn=_stack_same_shape)
    start = 0
    try:
        for batch in loader:
            if tuple(batch.shape[1:]) != shape:
                raise DataError(f"data.decoded_cache: images of shape {tuple(batch.shape[1:])} beside {shape}; the "
                                "decoded cache needs images of one size (resize them, or leave decoded_cache unset)")
            array[start : start + len(batch)] = batch.numpy()
            start += len(batch)
    except DataError as err:
        raise DataError(worker_message(err)) from None
    array.flush()
    del array
    os.replace(partial, path)


def _reserve(path: Path) -> None:
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.path.getsize(path))
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot: written as it goes
                raise


def _stack_same_shape(items: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(item.shape) for item in items}
    if len(shapes) > 1:
        raise DataError(f"data.decoded_cache: images of different shapes {sorted(shapes)[:2]}; the decoded cache "
                        "needs images of one size (resize them, or leave decoded_cache unset)")
    return torch.stack(items)


def open_decoded(path: str | Path) -> np.ndarray:
    """The decoded array, memory-mapped read-only (nothing is read until rows are indexed)."""
    return np.load(path, mmap_mode="r", allow_pickle=False)
