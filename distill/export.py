"""Ship a trained student: its latency, and an MLflow (registered) model; the files are :mod:`distill.formats`."""

from __future__ import annotations

import copy
import math
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch import nn

from ensemble.base.errors import DistillError
from ensemble.data.rows import as_input
from ensemble.track.store_errors import store_errors
from ensemble.track.tracking import Tracker, redact

_URI_LOCK = threading.RLock()  # the URIs are process-wide: two threads must not swap them under each other


def _frozen_cpu_copy(model: nn.Module) -> nn.Module:
    """Exported graphs capture the mode they were traced in, so export an eval-mode CPU copy, never the caller's."""
    return copy.deepcopy(model).cpu().eval()


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


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


@contextmanager
def mlflow_uri_scope(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking and registry URIs at ``uri`` for the block, for fluent calls that take
    no URI (``mlflow.pytorch.load_model("models:/...")``); on exit they, and the ``MLFLOW_TRACKING_URI`` and
    ``MLFLOW_REGISTRY_URI`` variables MLflow mirrors them in, are as they were. :func:`log_model` needs no scope.
    """
    import mlflow

    with _URI_LOCK:
        saved_env = {name: os.environ.get(name) for name in _URI_VARS}
        saved_tracking, saved_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
        try:
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            yield
        finally:
            mlflow.set_tracking_uri(None)  # no process-wide URI: MLflow reads the variables again
            mlflow.set_registry_uri(None)
            _restore_env(saved_env)
            # A URI set in process but no longer in its variable (the caller changed it since) is set again.
            if mlflow.get_tracking_uri() != saved_tracking:
                mlflow.set_tracking_uri(saved_tracking)
            if mlflow.get_registry_uri() != saved_registry:
                mlflow.set_registry_uri(saved_registry)
            _restore_env(saved_env)


_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _restore_env(saved: dict[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def log_model(tracker: Tracker, run_id: str, model: nn.Module, example: torch.Tensor,
              registered_name: str | None = None, alias: str | None = None, version_tags: dict | None = None) -> dict:
    """Log ``model`` to the existing run ``run_id`` in ``tracker``'s store; register it when a name is given, with
    ``version_tags`` on the new version and ``alias`` moved to it (``models:/NAME@ALIAS``).

    Everything goes through clients bound to ``tracker.uri`` (tracking and registry): MLflow's process-wide URIs,
    its environment variables and its fluent active run are neither read nor changed, so the run's status stays
    as the caller left it. The LoggedModel is created in the run's experiment (its artifacts beside the store's,
    never in ./mlruns), saved as ``pt2`` (``torch.export``: no pickle, no need for this package to load it) with
    pinned requirements (inferring them re-imports the model in a subprocess). ``torch.export`` fixes a batch
    dimension of size 1, so a single example is doubled to keep the batch dynamic.
    """
    import mlflow

    if int(mlflow.__version__.split(".")[0]) < 3:
        raise DistillError(f"export.log_model needs MLflow >= 3 (found {mlflow.__version__})")
    client = mlflow.MlflowClient(tracking_uri=tracker.uri, registry_uri=tracker.uri)
    try:
        run = client.get_run(run_id)
    except Exception as err:  # noqa: BLE001 - mlflow raises its own exception type for a missing run
        raise DistillError(f"export.log_model: no run {run_id!r} in {tracker.uri} ({_first_line(err)})") from None
    logged = client.create_logged_model(
        run.info.experiment_id, name="model", source_run_id=run_id, params=dict(run.data.params)
    )
    try:
        _link_to_run(client, run_id, logged.model_id)
        _save_model_artifacts(client, logged, run_id, model, example)
        client.finalize_logged_model(logged.model_id, "READY")
    except BaseException:
        with suppress(Exception):  # do not leave it PENDING forever, and keep the original error
            client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    return _publish(client, logged, run_id, tracker.uri, registered_name, alias, version_tags)


def publish_student(tracker: Tracker, run_id: str, model: nn.Module, example: torch.Tensor, reused: bool,
                    registered_name: str | None = None, alias: str | None = None,
                    version_tags: dict | None = None) -> dict:
    """:func:`log_model`, except for a student reused from disk: its run (the one that trained it) holds its
    LoggedModel already, which is registered again when asked instead of a copy being logged on every rerun."""
    import mlflow

    with store_errors(redact(tracker.uri)):
        client = mlflow.MlflowClient(tracking_uri=tracker.uri, registry_uri=tracker.uri)
        logged = _logged_model_of(client, run_id) if reused else None
        if logged is None:
            return log_model(tracker, run_id, model, example, registered_name, alias, version_tags)
        return _publish(client, logged, run_id, tracker.uri, registered_name, alias, version_tags)


def publish_api_student(distiller, options, val) -> dict | None:
    """The Python API's student as an MLflow model in its run, as the CLI logs it, registered only when the
    ``registered_model`` setting was given. None when nothing is tracked, or when the caller passed its own tracker
    (the CLI and sweeps, which publish their students themselves)."""

    run_id = distiller.run_ids_.get("student")
    if distiller.options.tracker is not None or options.tracker is None or not run_id:
        return None
    cfg = distiller.config
    asked = "registered_model" in cfg.model_fields_set and cfg.registered_model is not None
    return publish_student(options.tracker, run_id, distiller.student_, as_input(val.x[:2]),
                           distiller.results_[0].reused, cfg.registered_model if asked else None,
                           cfg.registered_alias if asked else None)


def _logged_model_of(client, run_id: str):
    """The newest READY LoggedModel that ``run_id`` output, or None."""
    outputs = client.get_run(run_id).outputs
    for output in reversed(outputs.model_outputs if outputs else []):
        logged = client.get_logged_model(output.model_id)
        if str(logged.status).endswith("READY"):
            return logged
    return None


def _publish(client, logged, run_id: str, uri: str, registered_name: str | None, alias: str | None,
             version_tags: dict | None) -> dict:
    version = None if registered_name is None else _register(client, registered_name, logged, run_id, uri)
    if version is not None:
        for key, value in (version_tags or {}).items():
            client.set_model_version_tag(registered_name, version, key, str(value))
        if alias:
            client.set_registered_model_alias(registered_name, alias, version)
    return {"model_uri": f"models:/{logged.model_id}", "registered_name": registered_name,
            "registered_version": None if version is None else str(version),
            "registered_alias": alias if version is not None else None}


def _link_to_run(client, run_id: str, model_id: str) -> None:
    """The model as an output of the run, with the run's step-0 metrics (its final scores) as the model's own."""
    from mlflow.entities import LoggedModelOutput, Metric

    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])
    metrics = [Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id,
                      dataset_name=m.dataset_name, dataset_digest=m.dataset_digest)
               for key in client.get_run(run_id).data.metrics
               for m in client.get_metric_history(run_id, key) if m.step == 0 and m.model_id is None]
    if metrics:
        client.log_batch(run_id, metrics=metrics)


def _save_model_artifacts(client, logged, run_id: str, model: nn.Module, example: torch.Tensor) -> None:
    """Save an eval-mode CPU copy in MLflow's pytorch format locally, then upload it as the LoggedModel's files."""

    import mlflow.pytorch
    from mlflow.models import Model, infer_signature

    frozen = _frozen_cpu_copy(model)
    example = example.detach().cpu()
    if example.shape[0] == 1:
        example = torch.cat([example, example])
    with torch.no_grad():
        output = frozen(example)
    inputs = example.numpy()
    metadata = Model(artifact_path=logged.artifact_location, model_uuid=logged.model_id, run_id=run_id,
                     model_id=logged.model_id)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model"
        mlflow.pytorch.save_model(
            frozen, str(local), mlflow_model=metadata, input_example=inputs,
            signature=infer_signature(inputs, output.numpy()), serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"],
        )
        client.log_model_artifacts(logged.model_id, str(local))


def _register(client, name: str, logged, run_id: str, uri: str) -> str:
    """A new version of registered model ``name`` (created on first use) from the LoggedModel ``logged``.

    A registry server resolves a ``models:/<id>`` source itself (and tags the LoggedModel with the version). A local
    store would resolve it through MLflow's process-wide tracking URI, not this client's (MLflow's own TODO in
    ``SqlAlchemyStore.create_model_version``), so it is given what it would resolve it to: the model's artifact
    location, as ``MlflowClient`` itself does for registries without ``models:/`` sources.
    """

    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    remote = urlparse(uri).scheme in ("http", "https")
    source = f"models:/{logged.model_id}" if remote else logged.artifact_location
    return client.create_model_version(name, source, run_id=run_id, model_id=logged.model_id).version
