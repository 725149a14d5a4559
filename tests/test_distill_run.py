"""``Distiller`` on a real Ray and MLflow store, and ``distill run`` end to end with skip-and-resume."""

import json
import urllib.request

import mlflow.pytorch
import pytest
import torch
from mlflow.tracking import MlflowClient

from distill import Distiller
from distill.export import mlflow_uri_scope
from ensemble import Ensemble
from ensemble.base.errors import DataError, ModelError

from helpers import distill, quick_train, small_mlp_factory
from servers import model_server


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
    path = d.export(tmp_path / "student.pt2")
    loaded = torch.export.load(str(path)).module()
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
    """Each exported file (pt2, ONNX) reproduces the test errors the pipeline reported for the eager student, and
    the outputs of the student registered in MLflow (a separate ``torch.export`` of the same eager model)."""
    import onnxruntime

    assert set(student["formats"]) == {"pt2", "onnx"} and student["export_path"] == student["formats"]["pt2"]["path"]
    pt2 = torch.export.load(student["formats"]["pt2"]["path"]).module()
    session = onnxruntime.InferenceSession(student["formats"]["onnx"]["path"], providers=["CPUExecutionProvider"])
    onnx = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: digits.test.x.numpy()})[0])
    x = digits.test.x[:33]
    with torch.no_grad():
        logits = pt2(digits.test.x)
        assert logits.shape == (len(digits.test.y), digits.num_classes)
        assert int((logits.argmax(1) != digits.test.y).sum()) == student["test_errors"]
        torch.testing.assert_close(onnx, logits, atol=1e-4, rtol=0)
        with mlflow_uri_scope(uri):
            registered = mlflow.pytorch.load_model("models:/distilled-student@champion")
        torch.testing.assert_close(pt2(x), registered(x), atol=1e-5, rtol=1e-5)
    assert all(f["latency_ms_per_batch"] > 0 and f["bytes"] > 4 * student["params"]
               for f in student["formats"].values())


RUN_ARGS = ["--no-progress", "--set", "ensemble.members=2", "--set", "ensemble.train.epochs=3",
            "--set", "specialists.train.epochs=2", "--set", "student.train.epochs=3",
            "--set", "tracking.system_metrics=true"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """``distill run`` of the digits demo, once for the module: (output folder, tracking URI, results.json)."""
    root = tmp_path_factory.mktemp("run")
    out, uri = root / "out", f"sqlite:///{root}/mlflow.db"
    done = distill("run", "--output-dir", str(out), "--tracking-uri", uri, *RUN_ARGS)
    assert done.returncode == 0, done.stderr
    assert "pipeline summary" in done.stdout and "ECE" in done.stdout
    return out, uri, json.loads((out / "results.json").read_text())


def test_run_command_end_to_end(finished_run, digits):
    out, uri, results = finished_run
    student = results["student"]
    for key in ("test_accuracy", "test_errors", "baseline_test_accuracy", "baseline_test_errors", "export_path",
                "params", "test_ece", "test_brier", "agreement", "kl_from_teacher", "teacher_test_ece"):
        assert key in student
    assert 0 <= student["test_ece"] <= 1 and 0 <= student["test_brier"] <= 2 and 0 < student["agreement"] <= 1
    _check_the_exported_student(student, digits, uri)
    spec = results["specialists"]
    assert spec["groups"] and all(isinstance(c, int) for g in spec["groups"] for c in g)
    assert 0 < spec["generalist_test_accuracy"] <= 1 and 0 < spec["test_accuracy"] <= 1
    assert spec["test_ece"] is not None and spec["generalist_test_brier"] is not None
    assert {"covering", "examples", "delta_correct"} <= set(spec["by_covering"][0])
    assert results["generalist"]["test_accuracy"] == pytest.approx(spec["generalist_test_accuracy"])
    assert all(m["test_ece"] is not None for m in results["ensemble"]["members"])
    assert {"test_ece_arithmetic", "test_brier_geometric"} <= set(results["ensemble"])
    assert (out / "specialists" / "class_matrix.png").stat().st_size > 10_000
    assert (out / "report.md").read_text().count("|") > 20 and "ECE" in (out / "report.md").read_text()
    _check_the_mlflow_runs(uri, results)


def _check_the_mlflow_runs(uri: str, results: dict) -> None:
    client = MlflowClient(uri)
    parent = results["mlflow"]["parent_run_id"]
    parent_run = client.get_run(parent)
    assert parent_run.info.run_name == "digits: run"  # named after the config file and the command
    contexts = {d.tags[0].value: json.loads(d.dataset.profile)["num_rows"] for d in parent_run.inputs.dataset_inputs}
    assert contexts == {"train": 1294, "val": 144, "test": 359}  # digits: 1797 images, test 20%, then 10% val
    assert any(key.startswith("system/cpu_utilization") for key in parent_run.data.metrics)
    children = client.search_runs([results["mlflow"]["experiment_id"]], f"tags.`mlflow.parentRunId` = '{parent}'")
    roles = sorted(r.data.tags["role"] for r in children)
    assert roles.count("member") == 2 and "generalist" in roles and "specialist" in roles
    assert "student" in roles and "student_baseline" in roles
    assert all(len(r.inputs.dataset_inputs) == 3 for r in children)
    assert {"test_ece", "test_brier", "test_nll"} <= set(next(r for r in children
                                                               if r.data.tags["role"] == "member").data.metrics)
    assert {"student_test_ece", "student_agreement", "student_kl_from_teacher"} <= set(parent_run.data.metrics)
    version = client.get_model_version_by_alias("distilled-student", "champion")
    assert version.run_id == results["student"]["mlflow_run_id"]
    assert version.tags["teacher"] == "ensemble" and float(version.tags["test_accuracy"]) == pytest.approx(
        results["student"]["test_accuracy"])
    artifacts = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/training_curves.png", "report/accuracy_per_model.png",
            "report/reliability.png"} <= artifacts
    assert {a.path for a in client.list_artifacts(parent, "specialists")} == {
        "specialists/groups.json", "specialists/class_matrix.png"}


def test_the_registered_student_serves_its_predictions(finished_run, digits, tmp_path):
    """``mlflow models serve`` of ``models:/distilled-student@champion``: posted test images come back as the
    student's own logits."""
    out, uri, results = finished_run
    images = digits.test.x[:25]
    with torch.no_grad():
        expected = torch.export.load(results["student"]["formats"]["pt2"]["path"]).module()(images)
    with model_server("models:/distilled-student@champion", uri, tmp_path) as url:
        request = urllib.request.Request(f"{url}/invocations", data=json.dumps({"inputs": images.tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            served = torch.tensor(json.loads(reply.read())["predictions"])
    torch.testing.assert_close(served, expected, atol=1e-4, rtol=0)
    assert torch.equal(served.argmax(1), expected.argmax(1))


def test_a_second_run_reuses_every_finished_model(finished_run):
    out, uri, results = finished_run
    again = distill("run", "--output-dir", str(out), "--tracking-uri", uri, *RUN_ARGS)
    assert again.returncode == 0, again.stderr
    rerun = json.loads((out / "results.json").read_text())
    assert rerun["student"]["reused"] and all(m["reused"] for m in rerun["ensemble"]["members"])
    assert all(m["reused"] for m in rerun["specialists"]["members"])
    assert rerun["student"]["test_errors"] == results["student"]["test_errors"]
    assert "Started a local Ray instance" not in again.stderr, "nothing to train: no cluster started"
    assert rerun["student"]["registered_version"] == "2"  # each run registers a version; the alias follows it
    version = MlflowClient(uri).get_model_version_by_alias("distilled-student", "champion")
    assert str(version.version) == "2"


@pytest.mark.parametrize("override, message", [
    ("student.temperature=0", "student.temperature: Input should be greater than 0"),
    ("student.alpha=1.5", "student.alpha: Input should be less than or equal to 1"),
    ("student.loss=kl", "student.loss: unknown loss 'kl'"),
    ("student.export=[pt2, pt3]", "student.export: unknown export format 'pt3'"),
    ("student.registered_alias=latest", "student.registered_alias: 'latest' is reserved by MLflow"),
])
def test_bad_student_settings_are_one_line_errors(tmp_path, override, message):
    done = distill("run", "--output-dir", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{tmp_path}/m.db",
                   "--set", override)
    assert done.returncode == 2
    assert message in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
