"""What the three Python API classes (``Ensemble``, ``SpecialistEnsemble``, ``Distiller``) share: their keyword
arguments, the data checks of every entry point that takes data (:mod:`ensemble.data.inputs`), and ``predict``."""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from typing import Callable

import torch

from ensemble.base.errors import ConfigError, DataError
from ensemble.data.inputs import as_inputs, as_split, is_array
from ensemble.data.registry import looks_unscaled
from ensemble.data.split import Split, check_split
from ensemble.engine.fit import FitOptions
from ensemble.schema.loading import ConfigT, api_arguments

FIT_OPTIONS = tuple(f.name for f in dataclasses.fields(FitOptions))


class Estimator:
    """The shared preamble of ``__init__`` and ``fit`` and the input checks of inference. Subclasses name the
    attribute that is set once fitted (``fitted_attribute``) and define ``predict_proba``."""

    fitted_attribute: str = ""
    input_shape_: tuple[int, ...] | None = None

    @property
    def _name(self) -> str:
        return type(self).__name__

    def _arguments(self, schema: type[ConfigT], config, kwargs: dict, aliases: dict[str, str],
                   defaults: dict | None = None) -> tuple[ConfigT, FitOptions]:
        """The section with the keywords that name its fields applied, and :class:`FitOptions` from the rest (its
        resources from the section's, unless given). Any other keyword is a one-line :class:`ConfigError`."""
        parameters = list(inspect.signature(type(self).__init__).parameters.values())[1:]
        own = [p.name for p in parameters if p.kind == p.KEYWORD_ONLY]
        positional = [p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
        section, options = api_arguments(schema, config, kwargs, aliases, self._name, [*FIT_OPTIONS, *own],
                                         positional)
        resources = section.resources
        return section, FitOptions(**{**(defaults or {}), "num_cpus": resources.num_cpus,
                                      "num_gpus": resources.num_gpus,
                                      "workers_per_model": resources.workers_per_model, **options})

    # --- data ---

    def _fit_splits(self, train, val, test=None, train_name: str = "train") -> dict[str, Split]:
        """Each split checked (:func:`ensemble.data.inputs.as_split`), its examples shaped like the training split's."""
        if is_array(train) and is_array(val):
            raise ConfigError(f"{self._name}.fit(x, y) is not supported: fit takes splits, each an (x, y) pair, "
                              "and a validation split: fit((x_train, y_train), (x_val, y_val), test=(x_test, y_test))")
        splits = {"train": as_split(train, train_name)}
        if not splits["train"].lazy and looks_unscaled(splits["train"].x):
            warnings.warn(f"{train_name} x holds whole numbers up to {float(splits['train'].x.max()):g}: unscaled "
                          "0..255 pixels? They are used as they are; pass them as uint8 (scaled to [0, 1] when "
                          "read) or divide by 255", UserWarning, stacklevel=3)
        shape = tuple(splits["train"].x.shape[1:])
        splits["val"] = as_split(val, "val", shape)
        if test is not None:
            splits["test"] = as_split(test, "test", shape)
        self.input_shape_ = shape
        return splits

    @staticmethod
    def _check_labels(splits: dict[str, Split], num_classes: int, train_name: str = "train") -> None:
        for name, split in splits.items():
            check_split(split, num_classes, train_name if name == "train" else name)

    def _check_fitted(self) -> None:
        fitted = getattr(self, self.fitted_attribute, None)
        if fitted is None or fitted == []:
            raise RuntimeError(f"this {self._name} is not fitted yet; call fit(train, val) first")

    def _inputs(self, x, where: str = "x"):
        """Inputs for inference, checked and shaped like the training inputs."""
        self._check_fitted()
        return as_inputs(x, where, self.input_shape_)

    def _test_split(self, test, where: str = "test") -> Split:
        self._check_fitted()
        split = as_split(test, where, self.input_shape_)
        check_split(split, self.num_classes_, where)
        return split

    # --- inference ---

    def predict_proba(self, x, **options) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, x, **options) -> torch.Tensor:
        """The most probable class of each row of ``x`` (``options`` as for ``predict_proba``, such as ``mean``)."""
        return self.predict_proba(x, **options).argmax(dim=1)


def output_width(model: Callable[[torch.Tensor], torch.Tensor], split: Split, what: str, where: str) -> int:
    """The number of classes ``model`` gives for the first examples of ``split``: the first use of the user's data
    with a trained model, so a mismatch is one line naming both."""
    try:
        return int(model(split.take(torch.arange(min(2, len(split)))).x).shape[1])
    except (RuntimeError, ValueError, IndexError) as err:
        raise DataError(f"{where}: the {what} cannot read inputs of shape {tuple(split.x.shape[1:])} "
                        f"({str(err).splitlines()[0]})") from None
