"""Ship a trained student: a checked TorchScript file, its latency, and an MLflow (registered) model."""

from __future__ import annotations

import copy
import math
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import torch
from torch import nn

from ensemble.errors import DistillError, ModelError
from ensemble.models import count_parameters
from ensemble.tracking import Tracker

_URI_LOCK = threading.RLock()  # the URIs are process-wide: two threads must not swap them under each other


def _frozen_cpu_copy(model: nn.Module) -> nn.Module:
    """Exported graphs capture the mode they were traced in, so export an eval-mode CPU copy, never the caller's."""
    return copy.deepcopy(model).cpu().eval()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    with warnings.catch_warnings():
        # torch 2.15 marks torch.jit as deprecated; TorchScript is still what runs without Python (C++, mobile).
        warnings.simplefilter("ignore", FutureWarning)
        return _export_torchscript(model, example, path)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Trace (or, failing that, script) ``model`` into ``path``; a file that loads but computes something else is
    worse than none, so the reloaded file must reproduce the eager outputs on ``example``."""
    path = Path(path)
    frozen = _frozen_cpu_copy(model)
    example = example.detach().cpu()
    with torch.no_grad():
        expected = frozen(example)
        try:
            compiled = torch.jit.trace(frozen, example)
        except Exception as trace_err:  # noqa: BLE001 - tracing fails in many ways; scripting is the fallback
            try:
                compiled = torch.jit.script(frozen)
            except Exception as script_err:  # noqa: BLE001
                raise ModelError(
                    f"export: cannot trace ({_first_line(trace_err)}) or script ({_first_line(script_err)}) the model"
                ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(compiled, str(path))
    with torch.no_grad():
        actual = torch.jit.load(str(path), map_location="cpu")(example)
    same = isinstance(actual, torch.Tensor) and actual.shape == expected.shape and actual.allclose(expected, atol=1e-5)
    if not same:
        raise ModelError(f"export: the TorchScript model saved to {path} does not reproduce the eager outputs")
    return path


def measure_latency(fn: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, repeats: int = 20,
                    warmup: int = 3) -> dict:
    """Median and p90 wall time of ``fn(batch)`` after warm-up (lazy init, caches); CUDA calls are synchronized."""
    if repeats < 1 or warmup < 0 or batch.dim() == 0 or batch.shape[0] == 0:
        raise ValueError("measure_latency needs repeats >= 1, warmup >= 0 and a non-empty batch")
    sync = torch.cuda.synchronize if batch.is_cuda else (lambda: None)
    times_ms = []
    with torch.inference_mode():
        for _ in range(warmup):
            fn(batch)
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            fn(batch)
            sync()
            times_ms.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times_ms)
    p90 = sorted(times_ms)[math.ceil(0.9 * repeats) - 1]  # nearest rank: an observed time, not an interpolation
    size = int(batch.shape[0])
    return {"batch_size": size, "median_ms": median, "p90_ms": p90, "per_example_us": median * 1000 / size}


def model_summary(model: nn.Module, path: str | Path | None = None) -> dict:
    """Parameter count and, once the model has been written out, its size on disk."""
    return {"params": count_parameters(model), "file_bytes": Path(path).stat().st_size if path else None}


@contextmanager
def mlflow_uri_scope(uri: str) -> Iterator[None]:
    """MLflow's ``log_model`` reads process-wide URIs; point them at ``uri`` and restore them, env vars too, on exit.

    ``mlflow.set_tracking_uri`` also writes ``MLFLOW_TRACKING_URI`` (and deletes it on reset to None).
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    with _URI_LOCK:
        saved_env = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        saved_tracking = getattr(tracking_utils, "_tracking_uri", None)
        saved_registry = getattr(registry_utils, "_registry_uri", None)
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            yield
        finally:
            mlflow.set_tracking_uri(saved_tracking)
            registry_utils._registry_uri = saved_registry  # set_registry_uri(None) would keep the env var
            for name, value in saved_env.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def log_model(tracker: Tracker, run_id: str, model: nn.Module, example: torch.Tensor,
              registered_name: str | None = None) -> dict:
    """Log ``model`` to the existing run ``run_id`` in ``tracker``'s store; register it when a name is given.

    The run is handed to MLflow by id, never made the fluent active run, so its status stays as the caller left
    it (``start_run(run_id=...)`` + ``end_run`` would mark it FINISHED). The LoggedModel is created here, in the
    run's experiment: MLflow 3 would put it in the fluent "current" experiment (Default, artifacts in ./mlruns).
    Saved as ``pt2`` (``torch.export``: no pickle, no need for this package to load it) with pinned requirements
    (inferring them re-imports the model in a subprocess). ``torch.export`` fixes a batch dimension of size 1,
    so a single example is doubled to keep the batch dynamic.
    """
    import mlflow
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import infer_signature

    if int(mlflow.__version__.split(".")[0]) < 3:
        raise DistillError(f"export.log_model needs MLflow >= 3 (found {mlflow.__version__})")
    try:
        run = tracker.client.get_run(run_id)
    except Exception as err:  # noqa: BLE001 - mlflow raises its own exception type for a missing run
        raise DistillError(f"export.log_model: no run {run_id!r} in {tracker.uri} ({_first_line(err)})") from None
    frozen = _frozen_cpu_copy(model)
    example = example.detach().cpu()
    if example.shape[0] == 1:
        example = torch.cat([example, example])
    with torch.no_grad():
        output = frozen(example)
    inputs = example.numpy()
    logged = tracker.client.create_logged_model(
        run.info.experiment_id, name="model", source_run_id=run_id, params=dict(run.data.params)
    )
    try:
        with mlflow_uri_scope(tracker.uri):
            info = mlflow.pytorch.log_model(
                frozen, name="model", model_id=logged.model_id,
                run_id=run_id,  # forwarded to mlflow.models.Model.log: attach without starting the run
                input_example=inputs, signature=infer_signature(inputs, output.numpy()), serialization_format="pt2",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
                registered_model_name=registered_name,
            )
    except BaseException:
        with suppress(Exception):  # do not leave it PENDING forever, and keep the original error
            tracker.client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    version = info.registered_model_version
    return {"model_uri": info.model_uri, "registered_name": registered_name,
            "registered_version": None if version is None else str(version)}
