"""``Distiller`` on a real Ray and MLflow store, and ``distill run`` end to end with skip-and-resume."""

import json

import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

from distill import Distiller
from distill.export import mlflow_uri_scope
from ensemble import Ensemble
from ensemble.errors import DataError, ModelError

from helpers import distill, quick_train, small_mlp_factory


@pytest.fixture(scope="module")
def teacher(ray_cpu, digits, tmp_path_factory):
    factory = small_mlp_factory(digits.input_shape, digits.num_classes, hidden=(64,))
    ens = Ensemble(factory, n_members=2, train=quick_train(6), output_dir=tmp_path_factory.mktemp("teacher"),
                   show_progress=False)
    return ens.fit(digits.train, digits.val, digits.test)


def _student(digits):
    return small_mlp_factory(digits.input_shape, digits.num_classes, hidden=(8,))


def test_distiller_trains_student_and_baseline_and_exports(teacher, digits, tmp_path):
    d = Distiller(teacher, _student(digits), temperature=4.0, alpha=0.9, baseline=True, train=quick_train(6),
                  output_dir=tmp_path, show_progress=False, use_cache=True)
    d.fit(digits.train, digits.val, digits.test)
    assert [r.name for r in d.results_] == ["student", "student_baseline"]
    assert not d.objective_.describe()["online"] and d.objective_.cache is not None, "targets came from the cache"
    assert {"train_soft", "train_hard"} <= set(d.results_[0].history[0]), "each loss term is logged"
    assert set(d.results_[1].history[0]) >= {"train_hard"} and "train_soft" not in d.results_[1].history[0]
    report = d.evaluate(digits.test)
    assert report["student"].accuracy > 0.7 and report["baseline"].accuracy > 0.5
    path = d.export(tmp_path / "student.pt")
    loaded = torch.jit.load(str(path))
    x = digits.test.x[:33]
    with torch.no_grad():
        assert torch.allclose(loaded(x), d.student_(x), atol=1e-5)


def test_augmented_inputs_use_the_online_teacher(teacher, digits, tmp_path):
    # One pixel of jitter on 8x8 digits is a strong augmentation: a few epochs learn well above chance (0.1).
    d = Distiller(teacher, _student(digits), jitter=1, train=quick_train(4), output_dir=tmp_path, show_progress=False)
    d.fit(digits.train, digits.val, digits.test)
    assert d.objective_.describe()["online"] and d.objective_.cache is None, "the teacher ran on each batch"
    student = d.results_[0]
    assert student.metrics["test_accuracy"] > 0.25
    assert {"train_soft", "train_hard"} <= set(student.history[0])
    assert student.history[-1]["train_loss"] < student.history[0]["train_loss"]


def test_a_stale_teacher_cache_is_an_error(teacher, digits, tmp_path):
    other = torch.utils.data.TensorDataset(digits.train.x[:100], digits.train.y[:100])
    d = Distiller(teacher, _student(digits), use_cache=True, output_dir=tmp_path, show_progress=False)
    with pytest.raises(DataError, match="no outputs cached for this transfer data"):
        d.fit(other, digits.val)


def test_a_student_of_the_wrong_width_is_refused(teacher, digits, tmp_path):
    wrong = small_mlp_factory(digits.input_shape, 7)
    with pytest.raises(ModelError, match="expected \\(10,\\)"):
        Distiller(teacher, wrong, output_dir=tmp_path, show_progress=False).fit(digits.train, digits.val)


def test_left_out_class_gets_a_bias_shift_chosen_on_validation(teacher, digits, tmp_path):
    d = Distiller(teacher, _student(digits), temperature=4.0, alpha=1.0, train=quick_train(8),
                  omit_classes=[3], output_dir=tmp_path, show_progress=False)
    d.fit(digits.train, digits.val, digits.test)
    assert not (digits.train.y[d.transfer_indices_] == 3).any()
    report = d.evaluate(digits.test)
    assert report.details["bias_shift"] >= 0
    assert report.details["left_out_errors"] <= report.details["left_out_errors_before_shift"]
    assert report.details["left_out_examples"] == int((digits.test.y == 3).sum())


def _check_the_exported_student(student: dict, digits, uri: str) -> None:
    """The TorchScript file reproduces the test errors the pipeline reported for the eager student, and the outputs
    of the student registered in MLflow (a separate ``torch.export`` of the same eager model)."""
    loaded = torch.jit.load(student["export_path"])
    x = digits.test.x[:33]
    with torch.no_grad():
        logits = loaded(digits.test.x)
        assert logits.shape == (len(digits.test.y), digits.num_classes)
        assert int((logits.argmax(1) != digits.test.y).sum()) == student["test_errors"]
        with mlflow_uri_scope(uri):
            registered = mlflow.pytorch.load_model("models:/distilled-student/1")
        torch.testing.assert_close(loaded(x), registered(x), atol=1e-5, rtol=1e-5)


def test_run_command_end_to_end_then_skips_finished_stages(tmp_path, digits):
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    args = ["--output-dir", str(out), "--tracking-uri", uri, "--no-progress", "--set", "ensemble.members=2",
            "--set", "ensemble.train.epochs=3", "--set", "specialists.train.epochs=2",
            "--set", "student.train.epochs=3"]
    done = distill("run", *args)
    assert done.returncode == 0, done.stderr
    assert "pipeline summary" in done.stdout
    results = json.loads((out / "results.json").read_text())
    student = results["student"]
    for key in ("test_accuracy", "test_errors", "baseline_test_accuracy", "baseline_test_errors", "export_path",
                "params"):
        assert key in student
    _check_the_exported_student(student, digits, uri)
    spec = results["specialists"]
    assert spec["groups"] and all(isinstance(c, int) for g in spec["groups"] for c in g)
    assert 0 < spec["generalist_test_accuracy"] <= 1 and 0 < spec["test_accuracy"] <= 1
    assert {"covering", "examples", "delta_correct"} <= set(spec["by_covering"][0])
    assert results["generalist"]["test_accuracy"] == pytest.approx(spec["generalist_test_accuracy"])
    assert (out / "specialists" / "class_matrix.png").stat().st_size > 10_000
    assert (out / "report.md").read_text().count("|") > 20
    client = MlflowClient(uri)
    parent = results["mlflow"]["parent_run_id"]
    roles = sorted(r.data.tags["role"] for r in client.search_runs(
        [results["mlflow"]["experiment_id"]], f"tags.`mlflow.parentRunId` = '{parent}'"))
    assert roles.count("member") == 2 and "generalist" in roles and "specialist" in roles
    assert "student" in roles and "student_baseline" in roles
    assert client.get_model_version("distilled-student", "1").run_id == student["mlflow_run_id"]
    artifacts = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/training_curves.png", "report/accuracy_per_model.png"} <= artifacts
    assert {a.path for a in client.list_artifacts(parent, "specialists")} == {
        "specialists/groups.json", "specialists/class_matrix.png"}

    again = distill("run", *args)
    assert again.returncode == 0, again.stderr
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["student"]["reused"] and all(m["reused"] for m in rerun["ensemble"]["members"])
    assert all(m["reused"] for m in rerun["specialists"]["members"])
    assert rerun["student"]["test_errors"] == student["test_errors"]
    assert "Started a local Ray instance" not in again.stderr, "nothing to train: no cluster started"


@pytest.mark.parametrize("override, message", [
    ("student.temperature=0", "student.temperature: Input should be greater than 0"),
    ("student.alpha=1.5", "student.alpha: Input should be less than or equal to 1"),
    ("student.loss=kl", "student.loss: unknown loss 'kl'"),
])
def test_bad_student_settings_are_one_line_errors(tmp_path, override, message):
    done = distill("run", "--output-dir", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                   "--set", override)
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
