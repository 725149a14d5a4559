"""What the Python API accepts as data, checked once at the door: every split given to ``fit``/``evaluate`` and every
input given to ``predict_proba``/``predict``/``export`` goes through here, so bad data is one line naming the argument.

A split is an ``(x, y)`` pair of numpy arrays or tensors, a :class:`~ensemble.data.split.Split`, or a map-style
dataset of
``(input, label)`` pairs. Inputs ``x`` are one row per example, ``(N, features)`` or ``(N, C, H, W)``, floats (or
booleans) used as they are, or ``uint8`` images in 0..255, scaled to [0, 1] where a model reads them (as
ImageFolder's are); other integers are refused, since nothing says what their scale is. Labels ``y`` are class
indices, ``(N,)``: integers, or floats that are whole numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from ensemble.base.errors import DataError
from ensemble.data.split import Split
from ensemble.data.streaming import LazyImages


def is_array(value) -> bool:
    return isinstance(value, (np.ndarray, torch.Tensor))


def _numpy(value) -> np.ndarray:
    return value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)


def as_labels(y, where: str) -> torch.Tensor:
    """``y`` as int64 class indices; refused when it holds anything else than whole numbers, one per example."""
    try:
        labels = _numpy(y)
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: labels must be integer class indices ({err})") from None
    if labels.ndim != 1:
        hint = "; one-hot or probability rows? pass y.argmax(1)" if labels.ndim == 2 and labels.shape[1] > 1 else ""
        raise DataError(f"{where}: labels must be one class index per example, shape (N,), got shape "
                        f"{labels.shape}{hint}")
    if labels.dtype == np.bool_ or np.issubdtype(labels.dtype, np.integer):
        return torch.from_numpy(labels.astype(np.int64))
    if not np.issubdtype(labels.dtype, np.floating):
        raise DataError(f"{where}: labels must be integer class indices, got dtype {labels.dtype}; map class names "
                        "to 0..C-1 first")
    bad = ~np.isfinite(labels)
    if bad.any():
        raise DataError(f"{where}: labels contain NaN or infinite values ({int(bad.sum())}, first at row "
                        f"{int(np.argmax(bad))})")
    fractional = labels != np.round(labels)
    if fractional.any():
        row = int(np.argmax(fractional))
        raise DataError(f"{where}: labels must be whole class indices, found {labels[row].item()!r} at row {row} "
                        f"({int(fractional.sum())} fractional); round or map them to 0..C-1 yourself")
    return torch.from_numpy(labels.astype(np.int64))


def as_inputs(x, where: str, example_shape: tuple[int, ...] | None = None) -> torch.Tensor | LazyImages:
    """``x`` as a tensor the models read (float32, or uint8 images), one row per example, finite, and shaped like
    ``example_shape`` (the training inputs') when given; streamed :class:`LazyImages` pass as they are."""
    if isinstance(x, LazyImages):
        return _same_shape(x, where, example_shape)
    if not is_array(x):
        raise DataError(f"{where}: expected a numpy array or tensor of inputs, got {type(x).__name__}")
    if torch.is_tensor(x):
        tensor = x.detach().cpu()
    else:
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise DataError(f"{where}: inputs must be numbers, got dtype {x.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(x))
    if tensor.is_complex():
        raise DataError(f"{where}: inputs must be real numbers, got dtype {tensor.dtype}")
    if tensor.dim() < 2:
        raise DataError(f"{where}: inputs must have one row per example, (N, features) or (N, C, H, W), got shape "
                        f"{tuple(tensor.shape)}")
    if tensor.dtype not in (torch.uint8, torch.bool) and not tensor.is_floating_point():
        raise DataError(f"{where}: {str(tensor.dtype).removeprefix('torch.')} inputs have no known scale; pass "
                        "uint8 images (0..255, scaled to [0, 1] when read) or floats already scaled")
    if tensor.dtype != torch.uint8:  # uint8 stays: images, scaled where a model reads them
        tensor = tensor.float()
    if tensor.is_floating_point():
        bad = ~torch.isfinite(tensor.flatten(1)).all(dim=1)
        if bad.any():
            raise DataError(f"{where}: inputs contain NaN or infinite values ({int(bad.sum())} rows, first at row "
                            f"{int(bad.nonzero()[0])})")
    return _same_shape(tensor, where, example_shape)


def _same_shape(x, where: str, example_shape: tuple[int, ...] | None):
    if example_shape is not None and len(x) and tuple(x.shape[1:]) != tuple(example_shape):
        raise DataError(f"{where}: each example must have shape {tuple(example_shape)} as in training, got "
                        f"{tuple(x.shape[1:])} (inputs of shape {tuple(x.shape)})")
    return x


def as_split(data, where: str, example_shape: tuple[int, ...] | None = None,
             memory_budget_mb: float = 2048) -> Split:
    """Any split the API accepts (see the module's docstring) as a checked, non-empty :class:`Split`."""
    if isinstance(data, Split):
        split = Split(as_inputs(data.x, f"{where} x", example_shape), as_labels(data.y, f"{where} y"))
    elif isinstance(data, (tuple, list)) and data and is_array(data[0]):
        if len(data) != 2:
            raise DataError(f"{where}: expected an (x, y) pair, got a {type(data).__name__} of {len(data)} items")
        x, y = data
        inputs = as_inputs(x, f"{where} x", example_shape)
        labels = as_labels(y, f"{where} y")
        if len(inputs) != len(labels):
            raise DataError(f"{where}: x has {len(inputs)} rows but y has {len(labels)} labels")
        split = Split(inputs, labels)
    elif is_array(data):
        raise DataError(f"{where}: got a bare array of shape {tuple(data.shape)}; pass each split as an (x, y) pair, "
                        "e.g. fit((x_train, y_train), (x_val, y_val))")
    else:
        split = _from_dataset(data, where, example_shape, memory_budget_mb)
    if not len(split):
        raise DataError(f"{where}: has no examples")
    return split


def _from_dataset(dataset, where: str, example_shape, memory_budget_mb: float) -> Split:
    """A map-style dataset of ``(input, label)`` pairs: in memory when it fits ``memory_budget_mb``, else streamed
    (:class:`ensemble.data.streaming.LazyImages`, labels from ``targets`` when it keeps them)."""
    expected = f"{where}: expected an (x, y) pair or a map-style dataset of (input, label) pairs"
    try:
        size_mb = len(dataset) * torch.as_tensor(dataset[0][0]).numel() * 4 / 2**20 if len(dataset) else 0
    except Exception as err:  # noqa: BLE001 - any failure here means the dataset is not map-style
        raise DataError(f"{expected} ({type(err).__name__}: {err})") from None
    try:
        if size_mb > memory_budget_mb:
            targets = getattr(dataset, "targets", None)
            labels = targets if targets is not None else [dataset[i][1] for i in range(len(dataset))]
            return Split(as_inputs(LazyImages(dataset), f"{where} x", example_shape), as_labels(labels, f"{where} y"))
        items = [dataset[i] for i in range(len(dataset))]
        inputs = [torch.as_tensor(item[0]) for item in items]
        labels = [_numpy(item[1]) for item in items]
    except Exception as err:  # noqa: BLE001 - any failure here means the dataset is not map-style
        raise DataError(f"{expected} ({type(err).__name__}: {err})") from None
    if not items:
        return Split(torch.empty(0), torch.empty(0, dtype=torch.int64))
    shapes = sorted({tuple(t.shape) for t in inputs})
    if len(shapes) > 1:
        row = next(i for i, t in enumerate(inputs) if tuple(t.shape) != tuple(inputs[0].shape))
        raise DataError(f"{where}: inputs differ in shape ({tuple(inputs[0].shape)} at row 0, "
                        f"{tuple(inputs[row].shape)} at row {row})")
    return Split(as_inputs(torch.stack(inputs), f"{where} x", example_shape), as_labels(np.stack(labels),
                                                                                       f"{where} y"))
