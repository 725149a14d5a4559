"""The files a student ships as, by name (``student.export``): ``pt2`` (``torch.export``), ``onnx`` (the dynamo
exporter, run by onnxruntime) and ``torchscript`` (deprecated by PyTorch; on request only).

Every format is written from an eval-mode CPU copy with a dynamic batch dimension, loaded back the way a user
would load it, and run on two batch sizes: a file whose outputs differ from the eager model's by more than
:data:`EXPORT_TOLERANCE` is an error, never a warning. The model carries its own input normalisation
(:class:`ensemble.data.transforms.NormalizedModel`), so every format takes raw inputs.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ensemble.base.errors import ConfigError, ModelError, StorageError
from ensemble.base.records import writing

from .export import _first_line, _frozen_cpu_copy

EXPORT_TOLERANCE = 1e-4  # largest |exported − eager| output difference accepted

Runner = Callable[[torch.Tensor], torch.Tensor]


class ExportFormat:
    """One file format: ``save`` writes the model, ``load`` returns a function from inputs to outputs."""

    name: str
    suffix: str

    def save(self, model: nn.Module, example: torch.Tensor, path: Path) -> None:
        raise NotImplementedError

    def load(self, path: Path) -> Runner:
        raise NotImplementedError


FORMATS: dict[str, ExportFormat] = {}


def register_format(cls: type[ExportFormat]) -> type[ExportFormat]:
    """Class decorator: ``student.export`` may name ``cls.name`` from then on."""
    FORMATS[cls.name] = cls()
    return cls


def _batch_dynamic() -> tuple:
    return ({0: torch.export.Dim.DYNAMIC},)


@register_format
class Pt2(ExportFormat):
    name, suffix = "pt2", ".pt2"

    def save(self, model, example, path):
        program = torch.export.export(model, (example,), dynamic_shapes=_batch_dynamic())
        with open(path, "wb") as fh:  # a Python file: a failed write is an OSError with its errno, not a C++ line
            torch.export.save(program, fh)

    def load(self, path):
        return torch.export.load(str(path)).module()


@register_format
class Onnx(ExportFormat):
    name, suffix = "onnx", ".onnx"

    def save(self, model, example, path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter warns about each decomposition it chooses
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=["input"],
                                        output_names=["logits"], dynamic_shapes=_batch_dynamic(), verbose=False)
        program.save(str(path), external_data=False)

    def load(self, path):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])


@register_format
class TorchScript(ExportFormat):
    name, suffix = "torchscript", ".torchscript.pt"

    def save(self, model, example, path):
        with warnings.catch_warnings():
            # torch marks torch.jit as deprecated; TorchScript is still what some C++ and mobile runtimes load.
            warnings.simplefilter("ignore", FutureWarning)
            try:
                compiled = torch.jit.trace(model, example)
            except Exception as trace_err:  # noqa: BLE001 - tracing fails in many ways; scripting is the fallback
                try:
                    compiled = torch.jit.script(model)
                except Exception as script_err:  # noqa: BLE001
                    raise ModelError(f"export: cannot trace ({_first_line(trace_err)}) or script "
                                     f"({_first_line(script_err)}) the model") from None
            with open(path, "wb") as fh:
                torch.jit.save(compiled, fh)

    def load(self, path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")


def format_of(path: str | Path) -> ExportFormat:
    """The format a file name asks for, by its suffix (``student.pt2``, ``student.onnx``, ``student.pt``)."""
    name = Path(path).name
    for fmt in FORMATS.values():
        if name.endswith(fmt.suffix):
            return fmt
    if name.endswith(".pt"):
        return FORMATS["torchscript"]
    raise ConfigError(f"export: {name!r} names no known format; expected a file ending in "
                      f"{', '.join(f.suffix for f in FORMATS.values())}")


def export_model(model: nn.Module, example: torch.Tensor, path: str | Path, fmt: str | None = None) -> Path:
    """Write ``model`` to ``path`` in ``fmt`` (by default the one its suffix names) and check the file: loaded back,
    it must give the eager outputs, within :data:`EXPORT_TOLERANCE`, on ``example`` and on a batch of another size."""
    path = Path(path)
    chosen = format_of(path) if fmt is None else FORMATS.get(fmt)
    if chosen is None:
        raise ConfigError(f"export: unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    frozen = _frozen_cpu_copy(model)
    # A copy: a slice of a large tensor would otherwise be saved with its whole storage (pt2 keeps the example).
    example = example.detach().cpu().clone()
    if example.shape[0] == 1:
        example = torch.cat([example, example])  # a batch of one would be specialised to size 1
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".partial-{path.name}")  # renamed once whole: a full disk leaves no half file
    try:
        with torch.no_grad(), writing(path):
            chosen.save(frozen, example, partial)
        os.replace(partial, path)
    except (ModelError, StorageError):
        raise
    except Exception as err:  # noqa: BLE001 - exporters fail in many ways; one line names the format
        raise ModelError(f"export: cannot write the model as {chosen.name} ({_first_line(err)})") from None
    finally:
        partial.unlink(missing_ok=True)
    check_reproduces(frozen, chosen, path, [example, torch.cat([example, example[:1].flip(-1)])])
    return path


def check_reproduces(model: nn.Module, fmt: ExportFormat, path: Path, batches: list[torch.Tensor]) -> None:
    runner = fmt.load(path)
    for batch in batches:
        with torch.no_grad():
            expected, actual = model(batch), runner(batch)
        if not isinstance(actual, torch.Tensor) or actual.shape != expected.shape:
            raise ModelError(f"export: the {fmt.name} file {path} gives outputs of shape "
                             f"{getattr(actual, 'shape', type(actual).__name__)}, expected {tuple(expected.shape)}")
        gap = float((actual.float() - expected.float()).abs().max())
        if not gap <= EXPORT_TOLERANCE:
            raise ModelError(f"export: the {fmt.name} file {path} does not reproduce the eager outputs "
                             f"(max |difference| {gap:.2e} > {EXPORT_TOLERANCE:g})")
