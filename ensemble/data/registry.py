"""Datasets by name: each loader returns (train, test, class_names); the validation split is carved from train.
Users add their own with :func:`register_dataset`."""

from __future__ import annotations

import logging
import math
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ensemble.base.errors import DataError
from ensemble.base.registry import Registry
from ensemble.data.imagefolder import imagefolder_splits
from ensemble.data.inputs import as_inputs, as_labels, as_split
from ensemble.data.split import DatasetSplits, Split, check_split
from ensemble.data.streaming import LazyImages, in_order

log = logging.getLogger(__name__)


def _digits(root: str, download: bool):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    # A fixed test split, independent of the run's seed, so every run is scored on the same images.
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(20150309))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    return Split(x[train], y[train]), Split(x[test], y[test]), [str(c) for c in range(10)]


def _torchvision(dataset_cls_name: str, channels_last: bool):
    def load(root: str, download: bool):
        import torchvision

        dataset_cls = getattr(torchvision.datasets, dataset_cls_name)
        splits = []
        for train in (True, False):
            try:
                ds = dataset_cls(root=root, train=train, download=download)
            except RuntimeError as err:
                where = Path(root).resolve() / getattr(dataset_cls, "__name__", dataset_cls_name)
                raise DataError(
                    f"data.root: {dataset_cls_name} files not found under {where} "
                    f"({str(err).splitlines()[0]}); set data.download: true or point data.root at them"
                ) from None
            data = torch.as_tensor(np.asarray(ds.data))
            x = data.permute(0, 3, 1, 2) if channels_last else data.unsqueeze(1)
            splits.append(Split(x.float().div_(255.0).contiguous(), torch.as_tensor(np.asarray(ds.targets)).long()))
        return splits[0], splits[1], list(getattr(ds, "classes", []))

    return load


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _npz(root: str, download: bool):
    """Your own arrays from the CLI: ``data.root`` names an ``.npz`` with x_train, y_train, x_test, y_test
    (inputs (N, C, H, W) or (N, features); optional ``class_names``)."""
    path = Path(root)
    if not path.is_file():
        raise DataError(f"data.root: {path.resolve()} is not a file; the npz dataset needs an .npz with {NPZ_KEYS}")
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # EOFError: an empty file
        raise DataError(f"data.root: {path} is not a readable .npz file ({err or type(err).__name__})") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):  # a lone .npy array, not an archive of named arrays
        raise DataError(f"data.root: {path} holds one array, not an .npz of named arrays {NPZ_KEYS} "
                        "(save it with np.savez)")
    missing = [key for key in NPZ_KEYS if key not in arrays.files]
    if missing:
        raise DataError(f"data.root: {path} lacks the arrays {missing}; expected {NPZ_KEYS}")

    def array(key: str) -> np.ndarray:
        try:
            return arrays[key]
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # a damaged member of the archive
            raise DataError(f"data.root: {path} {key} cannot be read ({err or type(err).__name__})") from None
        except ValueError as err:
            if "allow_pickle" not in str(err):
                raise DataError(f"data.root: {path} {key} cannot be read ({err})") from None
            # Object arrays (ragged lists, mixed types) only load through pickle, which can run arbitrary code.
            raise DataError(f"data.root: {path} {key} is an object array, which numpy reads only through pickle "
                            "(unsafe, so refused); save it as a numeric array, e.g. np.stack(items).astype("
                            "np.float32)") from None

    def split(kind: str) -> Split:
        return npz_split(array(f"x_{kind}"), array(f"y_{kind}"), f"data.root: {path}", kind)

    train, test = split("train"), split("test")
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DataError(f"data.root: {path} x_test holds examples of shape {tuple(test.x.shape[1:])}, x_train of "
                        f"{tuple(train.x.shape[1:])}; both splits must hold examples of one shape")
    names = [str(n) for n in array("class_names")] if "class_names" in arrays.files else []
    return train, test, names


def npz_split(x: np.ndarray, y: np.ndarray, where: str, kind: str) -> Split:
    """``x_<kind>``, ``y_<kind>`` of an npz as a Split, or one line naming the array. uint8 inputs are images in
    0..255, kept as uint8 and scaled to [0, 1] where a model reads them (as ImageFolder's are); other integer
    inputs are refused, since nothing says what their scale is."""

    if np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8:
        raise DataError(f"{where} x_{kind} holds {x.dtype} inputs, whose scale is unknown; save images as uint8 "
                        "(0..255, scaled to [0, 1] when read) or inputs as float32 already scaled")
    inputs, labels = as_inputs(x, f"{where} x_{kind}"), as_labels(y, f"{where} y_{kind}")
    if not len(inputs) or not len(labels):
        raise DataError(f"{where} x_{kind}/y_{kind} hold no examples ({len(inputs)} inputs, {len(labels)} labels); "
                        f"the npz dataset needs at least one {kind} example")
    if len(inputs) != len(labels):
        raise DataError(f"{where} x_{kind} has {len(inputs)} rows but y_{kind} has {len(labels)} labels")
    if inputs.dtype == torch.uint8:
        log.info("%s x_%s is uint8: read as images in 0..255, scaled to [0, 1]", where, kind)
    elif looks_unscaled(inputs):
        log.warning("%s x_%s holds whole numbers up to %g: unscaled 0..255 pixels? They are used as they are; save "
                    "them as uint8 (scaled to [0, 1] when read) or divide by 255", where, kind, float(inputs.max()))
    return Split(inputs, labels)


def looks_unscaled(x: torch.Tensor) -> bool:
    """Float images that are whole numbers in 0..255 with some above 1: raw pixels saved as floats."""
    if x.dim() != 4 or not x.is_floating_point() or not len(x):
        return False
    low, high = float(x.min()), float(x.max())
    return low >= 0 and 1 < high <= 255 and bool((x == x.round()).all())


DATASETS = Registry("dataset")


def register_dataset(name: str):
    """``@register_dataset("mine")`` on ``loader(root, download) -> (train, test, class_names)`` makes
    ``data.name: mine`` work; the validation split is carved from train as for the built-in ones."""
    return DATASETS.register(name)


for _name, _loader in {
    "npz": _npz,
    "imagefolder": imagefolder_splits,
    "digits": _digits,
    "mnist": _torchvision("MNIST", channels_last=False),
    "fashion_mnist": _torchvision("FashionMNIST", channels_last=False),
    "kmnist": _torchvision("KMNIST", channels_last=False),
    "cifar10": _torchvision("CIFAR10", channels_last=True),
    "cifar100": _torchvision("CIFAR100", channels_last=True),
}.items():
    register_dataset(_name)(_loader)


def load_dataset(
    name: str,
    root: str = "../shared/data",
    download: bool = False,
    val_size: float = 0.1,
    seed: int = 0,
    train_limit: int | None = None,
    in_memory: bool | str = "auto",
    memory_budget_mb: float = 2048,
    num_workers: int = 0,
    decoded_cache: str | None = None,
) -> DatasetSplits:
    """Load a dataset by name and carve a seeded validation split from its training set. A streamed dataset
    (``imagefolder``) is read into memory when ``in_memory`` is True, or "auto" and it fits ``memory_budget_mb``;
    otherwise it streams, from its files or, with ``decoded_cache``, from its decoded copy there."""
    full_train, test, class_names = DATASETS.lookup(name, "data.name", DataError)(root, download)
    order = torch.randperm(len(full_train), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(val_size * len(full_train))))
    if n_val >= len(full_train):
        raise DataError(f"data.val_size: {val_size} of the {len(full_train)} {name} training examples leaves none "
                        "to train on; use a smaller data.val_size or more training examples")
    val_idx, train_idx = order[:n_val], order[n_val:]
    if train_limit is not None:
        train_idx = train_idx[:train_limit]
    num_classes = len(class_names) if class_names else int(full_train.y.max()) + 1
    splits = DatasetSplits(
        name=name,
        train=full_train.take(train_idx),
        val=full_train.take(val_idx),
        test=test,
        num_classes=num_classes,
        class_names=class_names or [str(c) for c in range(num_classes)],
    )
    source = f"data.root: {root}" if name in ("npz", "imagefolder") else name  # a user's files: name them
    for split_name in ("train", "val", "test"):
        check_split(splits.split(split_name), num_classes, f"{source} {split_name} split")
    return place(splits, in_memory, memory_budget_mb, num_workers, decoded_cache)


def place(splits: DatasetSplits, in_memory: bool | str, memory_budget_mb: float, num_workers: int,
          decoded_cache: str | None = None) -> DatasetSplits:
    """Streamed splits read into memory (as uint8 when the images are) when asked or when they fit the budget, or
    else read from their decoded copy under ``decoded_cache`` when one is given."""
    lazy = [name for name in ("train", "val", "test") if splits.split(name).lazy]
    if not lazy:
        return splits
    for name in lazy:
        splits.split(name).x.num_workers = num_workers
    size_mb = sum(len(splits.split(n)) for n in lazy) * math.prod(splits.input_shape) / 2**20
    if in_memory is True or (in_memory == "auto" and size_mb <= memory_budget_mb):
        for name in lazy:
            split = splits.split(name)
            setattr(splits, name, Split(read_all(split.x), split.y))
    elif decoded_cache is not None:
        for name in lazy:
            split = splits.split(name)
            setattr(splits, name, Split(split.x.with_decoded(decoded_cache), split.y))
    return splits


def read_all(x: LazyImages) -> torch.Tensor:
    """Every example of a lazy split, in order, read by the DataLoader's workers."""
    return torch.cat(list(in_order(x, 1024)))


def materialize(dataset, where: str = "dataset", memory_budget_mb: float = 2048) -> Split:
    """Any split the Python API accepts, checked: an ``(x, y)`` pair, a Split or a map-style dataset, in memory when
    it fits ``memory_budget_mb``, else streamed (:func:`ensemble.data.inputs.as_split`)."""

    return as_split(dataset, where, memory_budget_mb=memory_budget_mb)


def to_numpy(split: Split) -> tuple[np.ndarray, np.ndarray] | Split:
    """Numpy arrays travel through the Ray object store without a copy and are shared by actors on a node; a streamed
    split travels as itself (its dataset's description and row indices)."""
    return split if split.lazy else (split.x.numpy(), split.y.numpy())


def from_numpy(arrays: tuple[np.ndarray, np.ndarray] | Split) -> Split:
    if isinstance(arrays, Split):
        return arrays
    with warnings.catch_warnings():
        # Object-store arrays are read-only; the trainer only ever gathers from them.
        warnings.simplefilter("ignore", UserWarning)
        return Split(torch.from_numpy(arrays[0]), torch.from_numpy(arrays[1]))
