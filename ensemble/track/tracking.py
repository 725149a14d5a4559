"""MLflow tracking through an explicit client: no global active run, so actors and drivers log the same way.

The driver creates the parent run and one nested run per model (``mlflow.parentRunId`` tag); actors get
the run id and a :class:`MetricsSink` and log their per-epoch metrics straight to the store (a SQLite
file locally, an ``http://`` MLflow server on a cluster).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

from ensemble.base.bounded import retry_for
from ensemble.base.errors import DistillError
from ensemble.track.store_errors import (
    check_schema,
    deleted_experiment,
    missing_experiment,
    open_error,
    schema_lock,
    store_errors,
)

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
# MLflow 3's UI opens GenAI (traces) views unless the experiment says it is model training.
KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"


HOST = socket.gethostname()
_URI_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]+):[^@/\s]+@", re.IGNORECASE)


def redact(value: Any) -> str:
    """Passwords inside URIs (``postgresql://user:pw@host``, ``http://user:pw@host``) never reach MLflow."""
    return _URI_PASSWORD.sub(r"\g<head>:***@", str(value))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative SQLite path or plain folder absolute so that every process (actors too) finds it."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _retry(call, *args, attempts: int = 6, **kwargs):
    """SQLite takes one writer at a time; concurrent actors occasionally see 'database is locked'."""
    for attempt in range(attempts):
        try:
            return call(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - mlflow wraps driver errors in several types
            if attempt == attempts - 1 or "locked" not in str(err).lower():
                raise
            time.sleep(0.2 * 2**attempt)


SERVER_WAIT_SECONDS = 10.0  # bounded: MLflow's own client retries a dead server for minutes


def _first_sentence(err: Exception) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text.split(". ")[0].rstrip(".")


def check_server(uri: str, seconds: float = SERVER_WAIT_SECONDS) -> None:
    """For an ``http(s)://`` store, fail in at most ``seconds`` unless something answers HTTP there.

    Any HTTP status counts as an answer (a proxy's 401 included): only a refused, unreachable or silent address
    is an error.
    """

    if not uri.lower().startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    # urllib does not take credentials from the URL: send them as MLflow would, in a basic-auth header.
    host = parts.netloc.rpartition("@")[2]
    request = urllib.request.Request(parts._replace(netloc=host, path=parts.path.rstrip("/") + "/health").geturl())
    if parts.username:
        token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")

    def ask(timeout: float) -> None:
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
        except urllib.error.HTTPError:
            return  # any HTTP status is an answer
        except ValueError as err:  # a malformed URL: reported like an unreachable one
            raise OSError(str(err)) from None

    err = retry_for(seconds, ask)
    if err is not None:
        reason = getattr(err, "reason", None) or err
        raise DistillError(
            f"tracking.uri: no MLflow server answers at {redact(uri)} ({reason}, for {seconds:.0f} s); "
            "start one (`mlflow server --host 127.0.0.1 --port PORT`) or use a local store such as sqlite:///mlflow.db")


class Tracker:
    def __init__(self, uri: str = "sqlite:///mlflow.db", experiment: str = "distill", experiment_id: str | None = None):
        """Runs go to ``experiment`` (created when missing), or to the experiment with ``experiment_id``."""
        from mlflow.tracking import MlflowClient

        self.uri = resolve_tracking_uri(uri)
        check_server(self.uri)
        try:
            # MLflow creates a new store's schema on first open: one process at a time (store_errors.schema_lock).
            with schema_lock(self.uri):
                self.client = MlflowClient(self.uri)
                found = self._experiment(experiment, experiment_id)
                check_schema(self.uri, redact(self.uri))
        except DistillError:
            raise
        except Exception as err:  # noqa: BLE001 - connection, permission, schema or format problems
            raise open_error(redact(self.uri), err) from None
        self.experiment_id = found.experiment_id
        if found.lifecycle_stage == "deleted":
            raise deleted_experiment(redact(self.uri), found.name, found.experiment_id)
        if KIND_TAG not in found.tags:  # never over a kind the user chose
            try:
                self.client.set_experiment_tag(self.experiment_id, KIND_TAG, TRAINING_KIND)
            except Exception as err:  # noqa: BLE001 - a read-only or permission-checked server: only the UI's view
                log.warning("could not tag MLflow experiment %s as model training: %s", self.experiment_id,
                            _first_sentence(err))

    def _experiment(self, name: str, experiment_id: str | None):
        from mlflow.exceptions import MlflowException

        if experiment_id is not None:
            try:
                return self.client.get_experiment(experiment_id)
            except MlflowException as err:
                if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    raise missing_experiment(redact(self.uri), experiment_id) from None
                raise
        found = self.client.get_experiment_by_name(name)
        return found or self.client.get_experiment(self._create_experiment(name))

    def _call(self, method, *args, **kwargs):
        """Every store call: retried while SQLite is busy, and a store that cannot be used is one line."""
        with store_errors(redact(self.uri)):
            return _retry(method, *args, **kwargs)

    def _create_experiment(self, name: str) -> str:
        artifact_location = None
        if self.uri.startswith("sqlite:///"):
            # Keep artifacts beside the database, wherever the process that creates the experiment runs.
            artifact_location = (Path(self.uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location,
                                                 tags={KIND_TAG: TRAINING_KIND})
        except Exception:  # noqa: BLE001 - another process created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def get_run(self, run_id: str):
        """The run, or None when this store has no such run or it was deleted."""
        from mlflow.exceptions import MlflowException

        try:
            run = self._call(self.client.get_run, run_id)
        except MlflowException:
            return None
        return run if run.info.lifecycle_stage == "active" else None

    def start_run(self, name: str, parent_id: str | None = None, tags: dict | None = None) -> str:
        all_tags = {str(k): redact(v) for k, v in (tags or {}).items()}
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        run = self._call(self.client.create_run, self.experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, redact(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self._call(self.client.log_batch, run_id, params=items[i : i + 100])

    def log_new_params(self, run_id: str, params: dict) -> None:
        """Only the params ``run_id`` does not hold yet: params never change, and a run that is not this library's
        (the caller's, or one that a second ``fit`` logs to again) may hold some already."""
        held = self._call(self.client.get_run, run_id).data.params
        flat = flatten(params)
        changed = sorted(k for k, v in flat.items() if k in held and held[k] != redact(v)[:6000])
        if changed:
            log.warning("MLflow run %s keeps its earlier value of %s", run_id, ", ".join(changed[:3]))
        self.log_params(run_id, {k: v for k, v in flat.items() if k not in held})

    def log_metrics(self, run_id: str, metrics: dict, step: int | None = None) -> None:
        with store_errors(redact(self.uri)):
            log_metrics(self.client, run_id, metrics, step)

    def set_tags(self, run_id: str, tags: dict) -> None:
        from mlflow.entities import RunTag

        self._call(self.client.log_batch, run_id, tags=[RunTag(k, redact(v)) for k, v in tags.items()])

    def log_inputs(self, run_id: str, inputs: list) -> None:
        if inputs:
            self._call(self.client.log_inputs, run_id, datasets=inputs)

    @contextmanager
    def system_metrics(self, run_id: str, enabled: bool = True, interval_s: float = 10.0) -> Iterator[None]:
        """MLflow's system metrics (CPU, memory, disk, network; GPU where nvidia-ml-py is installed) logged to
        ``run_id`` every ``interval_s`` while the block runs."""
        if not enabled:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_s, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self._call(self.client.log_artifact, run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self._call(self.client.log_text, run_id, text, artifact_file)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        self._call(self.client.log_figure, run_id, figure, artifact_file)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._call(self.client.set_terminated, run_id, status)

    def end_abandoned_runs(self, output_dir: str) -> list[str]:
        """Mark KILLED the runs of ``output_dir`` whose driver on this host died without ending them (SIGKILL,
        OOM killer, power loss): they would otherwise show RUNNING in the UI forever. Returns their ids."""
        query = f"attributes.status = 'RUNNING' and tags.output_dir = '{output_dir}' and tags.host = '{HOST}'"
        abandoned = []
        for run in self._call(self.client.search_runs, [self.experiment_id], query):
            pid = int(run.data.tags.get("pid", "0"))
            if pid and not _process_alive(pid):
                children = self._call(self.client.search_runs, [self.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and attributes.status = 'RUNNING'")
                for child in children:
                    self.end_run(child.info.run_id, "KILLED")
                self.set_tags(run.info.run_id, {"ended_by": f"a later run found driver pid {pid} gone"})
                self.end_run(run.info.run_id, "KILLED")
                abandoned.append(run.info.run_id)
        return abandoned

    @contextmanager
    def run(self, name: str, parent_id: str | None = None, tags: dict | None = None) -> Iterator[str]:
        """A run that ends FINISHED, FAILED on any error, or KILLED on Ctrl-C / SIGTERM."""
        tags = dict(tags or {})
        if parent_id is None:
            tags.update({"host": HOST, "pid": str(os.getpid())})
            if "output_dir" in tags:
                self.end_abandoned_runs(tags["output_dir"])
        run_id = self.start_run(name, parent_id, tags)
        try:
            yield run_id
        except BaseException as err:
            with suppress(Exception):  # a store that failed already must not hide the error that ended the run
                self.end_run(run_id, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        self.end_run(run_id, "FINISHED")

    def sink(self, run_id: str) -> "MetricsSink":
        return MetricsSink(self.uri, run_id)


def dataset_inputs(name: str, source: str, splits: dict) -> list:
    """One MLflow dataset input per split, tagged with the split's name as its context: ``name``, the split's
    content digest and its size, as ``mlflow.log_input`` logs them (the UI's Dataset column shows them)."""

    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for split_name, split in splits.items():
        if split is None:
            continue
        profile = {"num_rows": len(split), "input_shape": list(split.x.shape[1:])}
        dataset = Dataset(name=name, digest=split.fingerprint()[:36], source_type="local",
                          source=json.dumps({"uri": source}), profile=json.dumps(profile))
        inputs.append(DatasetInput(dataset, [InputTag("mlflow.data.context", split_name)]))
    return inputs


def log_metrics(client, run_id: str, metrics: dict, step: int | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if isinstance(v, (int, float))]
    if items:
        _retry(client.log_batch, run_id, metrics=items)


class MetricsSink:
    """Picklable per-run metric logger for actors: ``sink({"val_accuracy": 0.9}, step=3)``."""

    def __init__(self, uri: str, run_id: str):
        self.uri = uri
        self.run_id = run_id
        self._client = None

    def __getstate__(self):
        return {"uri": self.uri, "run_id": self.run_id, "_client": None}

    def __call__(self, metrics: dict, step: int | None = None) -> None:
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.uri)
        try:
            log_metrics(self._client, self.run_id, metrics, step)
        except Exception as err:  # noqa: BLE001 - losing a curve point must not kill a training run
            log.warning("could not log metrics to MLflow run %s: %s", self.run_id, err)
