"""Exporting a student: TorchScript round trips, latency numbers, and MLflow logging into an existing run."""

from __future__ import annotations

import os

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from distill.export import export_torchscript, log_model, measure_latency, mlflow_uri_scope
from ensemble.errors import DistillError, ModelError
from ensemble.models import build_model, count_parameters
from ensemble.tracking import Tracker

SHAPE = (1, 8, 8)


def _mlp() -> nn.Module:
    return build_model("mlp", SHAPE, 10, {"hidden": [16]})


@pytest.mark.parametrize("name, params", [("mlp", {"hidden": [16]}), ("cnn", None)])
def test_torchscript_round_trip_matches_eager_on_another_batch_size(tmp_path, digits, name, params):
    torch.manual_seed(0)
    model = build_model(name, SHAPE, 10, params)
    path = export_torchscript(model, torch.randn(4, *SHAPE), tmp_path / "nested" / f"{name}.pt")
    assert path == tmp_path / "nested" / f"{name}.pt" and path.is_file()
    assert model.training, "the caller's model must not be switched to eval mode"

    loaded = torch.jit.load(str(path))
    for batch in (torch.randn(7, *SHAPE), digits.test.x[:33]):  # batch sizes the trace never saw; real images
        with torch.no_grad():
            got, expected = loaded(batch), model.eval()(batch)
        assert got.shape == (len(batch), 10)
        assert not torch.allclose(got[0], got[1]), "rows differ, so a broadcast first row would fail"
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert path.stat().st_size > 4 * count_parameters(model)  # float32 weights are in the file


class _Noisy(nn.Module):
    def forward(self, x):
        return x * torch.rand(1)


class _RefusesTracing(nn.Module):
    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("no tracing here")
        return x * 2


def test_a_file_that_does_not_reproduce_the_model_is_a_model_error(tmp_path):
    with pytest.warns(torch.jit.TracerWarning), pytest.raises(ModelError, match="does not reproduce"):
        export_torchscript(_Noisy(), torch.ones(3, 2), tmp_path / "noisy.pt")


def test_scripting_is_the_fallback_when_tracing_fails(tmp_path):
    path = export_torchscript(_RefusesTracing(), torch.ones(3, 2), tmp_path / "scripted.pt")
    loaded = torch.jit.load(str(path))
    assert "is_tracing" in loaded.code  # scripted keeps the control flow; a trace would have flattened it
    torch.testing.assert_close(loaded(torch.full((5, 2), 3.0)), torch.full((5, 2), 6.0))


def test_measure_latency_reports_positive_times_for_the_batch():
    model, batch, calls = _mlp().eval(), torch.randn(5, *SHAPE), []

    def fn(x):
        calls.append(torch.is_inference_mode_enabled())
        return model(x)

    stats = measure_latency(fn, batch, repeats=7, warmup=2)
    assert set(stats) == {"batch_size", "median_ms", "p90_ms", "per_example_us"}
    assert stats["batch_size"] == 5 and isinstance(stats["batch_size"], int)
    assert 0 < stats["median_ms"] <= stats["p90_ms"]
    assert stats["per_example_us"] == pytest.approx(stats["median_ms"] * 1000 / 5)
    assert calls == [True] * 9
    with pytest.raises(ValueError):
        measure_latency(fn, batch, repeats=0)


def test_uri_scope_restores_globals_and_env_even_on_error(tmp_path, monkeypatch):
    other = f"sqlite:///{tmp_path}/other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    with pytest.raises(KeyError), mlflow_uri_scope(f"sqlite:///{tmp_path}/inner.db"):
        assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == f"sqlite:///{tmp_path}/inner.db"
        raise KeyError("boom")
    assert mlflow.get_tracking_uri() == os.environ["MLFLOW_TRACKING_URI"] == other
    assert "MLFLOW_REGISTRY_URI" not in os.environ


def test_log_model_attaches_to_the_running_run_and_registers_it(tracking_uri, tmp_path, monkeypatch):
    # Artifacts belong beside the database, not in the working directory (MLflow 3's fluent default).
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    other = f"sqlite:///{tmp_path}/other.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)  # a caller's own setting, which must survive
    torch.manual_seed(0)
    model = _mlp()
    tracker = Tracker(tracking_uri, "export-test")
    run_id = tracker.start_run("student")
    tracker.log_params(run_id, {"temperature": 4})

    info = log_model(tracker, run_id, model, torch.randn(1, *SHAPE), registered_name="student")

    assert mlflow.get_tracking_uri() == other and mlflow.active_run() is None
    assert not (tmp_path / "other.db").exists() and list(workdir.iterdir()) == []
    assert info["registered_name"] == "student" and info["registered_version"] == "1"
    client = MlflowClient(tracker.uri)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.info.end_time is None
    version = client.get_model_version("student", "1")
    assert version.run_id == run_id and version.status == "READY"
    model_id = info["model_uri"].removeprefix("models:/")
    assert model_id in [out.model_id for out in run.outputs.model_outputs]
    logged = client.get_logged_model(model_id)
    assert logged.experiment_id == tracker.experiment_id and logged.params == {"temperature": "4"}

    fresh = torch.randn(7, *SHAPE)  # a batch size neither the example (1) nor its doubled copy (2) had
    with torch.no_grad():
        expected = model.eval()(fresh)
        with mlflow_uri_scope(tracker.uri):
            for uri in (info["model_uri"], "models:/student/1"):
                torch.testing.assert_close(mlflow.pytorch.load_model(uri)(fresh), expected)
    assert mlflow.get_tracking_uri() == other

    with pytest.raises(DistillError, match="no run 'nope'"):  # e.g. a run id from another store
        log_model(tracker, "nope", model, torch.randn(2, *SHAPE))
