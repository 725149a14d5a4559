"""Exporting a student: pt2 / ONNX / TorchScript round trips, latency numbers, and MLflow logging into a run."""

from __future__ import annotations

import os

import mlflow
import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from distill.export import log_model, measure_latency, mlflow_uri_scope
from distill.formats import EXPORT_TOLERANCE, FORMATS, ExportFormat, export_model, format_of
from ensemble.base.errors import ConfigError, DistillError, ModelError
from ensemble.models.registry import build_model, count_parameters
from ensemble.track.tracking import Tracker
from ensemble.data.transforms import NormalizedModel

SHAPE = (1, 8, 8)


def _mlp() -> nn.Module:
    return build_model("mlp", SHAPE, 10, {"hidden": [16]})


def _load_with_its_own_runtime(fmt: str, path):
    """Each file read the way its users read it, not through distill.formats."""
    if fmt == "pt2":
        return torch.export.load(str(path)).module()
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    return torch.jit.load(str(path))


@pytest.mark.parametrize("fmt", ["pt2", "onnx", "torchscript"])
@pytest.mark.parametrize("name, params", [("mlp", {"hidden": [16]}), ("cnn", None)])
def test_every_format_reproduces_the_eager_model_with_its_normalisation(tmp_path, digits, fmt, name, params):
    torch.manual_seed(0)
    # The shipped model takes raw pixels: its normalisation (mean 8, std 4 here) is inside the file.
    model = NormalizedModel(build_model(name, SHAPE, 10, params), [8.0], [4.0])
    many = torch.randn(20_000, *SHAPE)  # the example is a view of 5 MB: only its two rows may reach the file
    path = export_model(model, many[:2], tmp_path / "nested" / f"student{FORMATS[fmt].suffix}")
    assert path.is_file() and format_of(path).name == fmt
    assert model.training, "the caller's model must not be switched to eval mode"
    weights = 4 * count_parameters(model)
    assert weights < path.stat().st_size < 2 * weights + 1_000_000  # float32 weights, and no stray tensors

    loaded = _load_with_its_own_runtime(fmt, path)
    for batch in (torch.rand(7, *SHAPE) * 16, digits.test.x[:33]):  # batch sizes the export never saw; real images
        with torch.no_grad():
            got, expected = loaded(batch), model.eval()(batch)
        assert got.shape == (len(batch), 10)
        assert not torch.allclose(got[0], got[1]), "rows differ, so a broadcast first row would fail"
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    with torch.no_grad():  # the normalisation is really applied: without it the outputs move
        assert not torch.allclose(loaded(digits.test.x[:5]), model[1](digits.test.x[:5]), atol=1e-2)


class _Noisy(nn.Module):
    def forward(self, x):
        return x * torch.rand(1)


class _RefusesTracing(nn.Module):
    def forward(self, x):
        if torch.jit.is_tracing():
            raise RuntimeError("no tracing here")
        return x * 2


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("fmt", ["pt2", "onnx", "torchscript"])
def test_a_file_that_does_not_reproduce_the_model_is_a_model_error(tmp_path, fmt):
    with pytest.raises(ModelError, match=f"the {fmt} file .* does not reproduce"):
        export_model(_Noisy(), torch.ones(3, 2), tmp_path / f"noisy{FORMATS[fmt].suffix}")


class _Shifted(ExportFormat):
    """A format whose runtime adds a constant: the tolerance check's boundary, tested."""

    name, suffix, shift = "shifted", ".shifted", 0.0

    def save(self, model, example, path):
        torch.save(model.state_dict(), path)

    def load(self, path):
        model = nn.Linear(2, 2)
        model.load_state_dict(torch.load(path, weights_only=True))
        return lambda x: model(x) + self.shift


@pytest.mark.parametrize("shift, fails", [(0.5 * EXPORT_TOLERANCE, False), (2 * EXPORT_TOLERANCE, True)])
def test_outputs_further_than_the_tolerance_are_refused(tmp_path, monkeypatch, shift, fails):
    shifted = _Shifted()
    shifted.shift = shift
    monkeypatch.setitem(FORMATS, "shifted", shifted)
    model = nn.Linear(2, 2)
    if fails:
        with pytest.raises(ModelError, match=r"max \|difference\| 2\.00e-04 > 0\.0001"):
            export_model(model, torch.ones(3, 2), tmp_path / "m.shifted")
    else:
        assert export_model(model, torch.ones(3, 2), tmp_path / "m.shifted").is_file()


def test_scripting_is_the_fallback_when_tracing_fails(tmp_path):
    path = export_model(_RefusesTracing(), torch.ones(3, 2), tmp_path / "scripted.torchscript.pt")
    loaded = torch.jit.load(str(path))
    assert "is_tracing" in loaded.code  # scripted keeps the control flow; a trace would have flattened it
    torch.testing.assert_close(loaded(torch.full((5, 2), 3.0)), torch.full((5, 2), 6.0))


def test_a_file_name_names_its_format():
    assert [format_of(n).name for n in ("a.pt2", "b.onnx", "c.torchscript.pt", "d.pt")] == \
        ["pt2", "onnx", "torchscript", "torchscript"]
    with pytest.raises(ConfigError, match="'e.pkl' names no known format"):
        format_of("e.pkl")


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

    info = log_model(tracker, run_id, model, torch.randn(1, *SHAPE), registered_name="student", alias="champion",
                     version_tags={"temperature": 4, "teacher": "ensemble"})

    assert mlflow.get_tracking_uri() == other and mlflow.active_run() is None
    assert not (tmp_path / "other.db").exists() and list(workdir.iterdir()) == []
    assert info["registered_name"] == "student" and info["registered_version"] == "1"
    client = MlflowClient(tracker.uri)
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING" and run.info.end_time is None
    version = client.get_model_version("student", "1")
    assert version.run_id == run_id and version.status == "READY"
    assert version.tags == {"temperature": "4", "teacher": "ensemble"}
    assert str(client.get_model_version_by_alias("student", "champion").version) == "1"
    assert info["registered_alias"] == "champion"
    model_id = info["model_uri"].removeprefix("models:/")
    assert model_id in [out.model_id for out in run.outputs.model_outputs]
    logged = client.get_logged_model(model_id)
    assert logged.experiment_id == tracker.experiment_id and logged.params == {"temperature": "4"}

    fresh = torch.randn(7, *SHAPE)  # a batch size neither the example (1) nor its doubled copy (2) had
    with torch.no_grad():
        expected = model.eval()(fresh)
        with mlflow_uri_scope(tracker.uri):
            for uri in (info["model_uri"], "models:/student/1", "models:/student@champion"):
                torch.testing.assert_close(mlflow.pytorch.load_model(uri)(fresh), expected)
    assert mlflow.get_tracking_uri() == other

    second = log_model(tracker, run_id, model, torch.randn(2, *SHAPE), registered_name="student", alias="champion")
    assert second["registered_version"] == "2"
    assert str(client.get_model_version_by_alias("student", "champion").version) == "2"  # the alias moves on

    with pytest.raises(DistillError, match="no run 'nope'"):  # e.g. a run id from another store
        log_model(tracker, "nope", model, torch.randn(2, *SHAPE))
