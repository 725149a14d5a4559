"""What the three Python API classes (``Ensemble``, ``SpecialistEnsemble``, ``Distiller``) share: their keyword
arguments and :class:`FitOptions`, the preamble of ``fit`` (the data checks of :mod:`ensemble.data.inputs`, the
number of classes, the data's fingerprint, MLflow tracking), and ``predict``."""

from __future__ import annotations

import functools
import inspect
import warnings
from contextlib import AbstractContextManager
from typing import Callable

import torch
from pydantic import BaseModel

from ensemble.base.errors import ConfigError, DataError
from ensemble.base.identity import fingerprint
from ensemble.data.inputs import as_inputs, as_split, is_array
from ensemble.data.registry import looks_unscaled
from ensemble.data.split import Split, check_split
from ensemble.engine.fit import FitOptions, api_tracking
from ensemble.schema.loading import api_arguments, unknown_keyword
from ensemble.training.trainer import TrainResult
from ensemble.base.warn import user_stacklevel

FIT_OPTIONS = FitOptions.names()


def checked_keywords(method: Callable, where: str) -> Callable:
    """``method`` refusing a keyword it does not take in one line naming ``where`` and its nearest parameter, instead
    of Python's bare ``TypeError`` (a method that takes ``**kwargs`` checks its own)."""
    parameters = list(inspect.signature(method).parameters.values())[1:]
    if any(p.kind == p.VAR_KEYWORD for p in parameters):
        return method
    names = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        for key in kwargs:
            if key not in names:
                raise ConfigError(unknown_keyword(where, key, names))
        return method(self, *args, **kwargs)

    return checked


class Estimator:
    """The shared preamble of ``__init__`` and ``fit`` and the input checks of inference. Subclasses name their config
    section (``schema``, its name ``section``, keyword ``aliases`` of its nested fields), where they write by default
    (``output_dir``), the attribute that is set once fitted (``fitted_attribute``), and define ``predict_proba``."""

    schema: type[BaseModel]
    section: str = ""
    aliases: dict[str, str] = {}
    output_dir: str = "runs/ensemble"
    fitted_attribute: str = ""
    input_shape_: tuple[int, ...] | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "fit" in cls.__dict__:
            cls.fit = checked_keywords(cls.__dict__["fit"], f"{cls.__name__}.fit")

    @property
    def _name(self) -> str:
        return type(self).__name__

    def _configure(self, config, kwargs: dict, options: FitOptions | None, aliases: dict[str, str] | None = None,
                   seed: int = 0) -> None:
        """``self.config``: the section with the keywords that name its fields applied; ``self.options``:
        ``options`` (by default this class's ``output_dir`` on the section's resources) with the keywords that name
        its fields applied. Any other keyword is a one-line :class:`ConfigError` naming the nearest valid one."""
        parameters = list(inspect.signature(type(self).__init__).parameters.values())[1:]
        own = [p.name for p in parameters if p.kind == p.KEYWORD_ONLY]
        positional = [p.name for p in parameters if p.kind == p.POSITIONAL_OR_KEYWORD]
        self.config, rest = api_arguments(self.schema, config, kwargs, aliases or self.aliases, self._name,
                                          [*FIT_OPTIONS, *own], positional)
        if options is None:
            resources = self.config.resources
            options = FitOptions(output_dir=self.output_dir, num_cpus=resources.num_cpus,
                                 num_gpus=resources.num_gpus, workers_per_model=resources.workers_per_model)
        elif not isinstance(options, FitOptions):
            raise ConfigError(f"{self._name}: options must be a FitOptions (ensemble.engine.fit), "
                              f"got {type(options).__name__}")
        self.options = options.updated(self._name, rest)
        self.seed = seed
        self.results_: list[TrainResult] = []
        self.run_ids_: dict[str, str] = {}

    def _fit_data(self, train, val, test, classes: Callable[[dict[str, Split]], int],
                  train_name: str = "train") -> tuple[dict[str, Split], str]:
        """The preamble of every ``fit``: the splits checked, ``self.num_classes_`` (``classes(splits)``) checked
        against their labels, and the fingerprint that names the data (each split's in ``split_fingerprints_``)."""
        splits = self._fit_splits(train, val, test, train_name)
        self.num_classes_ = classes(splits)
        self._check_labels(splits, self.num_classes_, train_name)
        self.split_fingerprints_ = {name: split.fingerprint() for name, split in splits.items()}
        return splits, fingerprint(self.split_fingerprints_)

    def _tracking(self) -> AbstractContextManager[FitOptions]:
        """Where this ``fit`` is tracked (:func:`ensemble.engine.fit.api_tracking`), its section as the params."""
        return api_tracking(self.options, self._name, {self.section: self.config.model_dump(mode="json")})

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
                          "read) or divide by 255", UserWarning, stacklevel=user_stacklevel())
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
