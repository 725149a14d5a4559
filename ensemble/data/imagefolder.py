"""The ``imagefolder`` dataset: ``root/train/<class>/*`` and ``root/test/<class>/*`` images, streamed."""

from __future__ import annotations

from pathlib import Path

import torch

from ensemble.base.errors import DataError
from ensemble.data.images import check_images
from ensemble.data.images import decode as decode_file
from ensemble.data.rows import targets_of
from ensemble.data.split import Split
from ensemble.data.streaming import LazyImages


def decode(path: str) -> torch.Tensor:
    """An image file as a uint8 (C, H, W) tensor (PNG, JPEG, GIF, WEBP): :func:`ensemble.data.images.decode`."""

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

    train, test = image_folder(root, "train"), image_folder(root, "test")
    missing = sorted(set(test.classes) - set(train.classes))
    if missing:
        raise DataError(f"data.root: {Path(root) / 'test'} has classes {missing} that {Path(root) / 'train'} lacks")

    # Every file's header now, so an odd size or mode is named before anything trains, not found by torch.stack.
    check_images(train.samples[0][0], [path for path, _ in [*train.samples, *test.samples]])
    # Test labels follow train's class numbering.
    test_targets = torch.tensor([train.class_to_idx[test.classes[t]] for t in test.targets], dtype=torch.int64)
    return (Split(LazyImages(train), targets_of(train)), Split(LazyImages(test), test_targets), list(train.classes))
