"""MLflow at the edges (issue 24): what a run records about a user's model, reused models linked rather than logged
again, the caller's own run and experiment, and a store that is damaged, new and raced for, or missing the
experiment asked for. Through the real CLI (its own processes) and the Python API, on real SQLite stores."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sqlite3
import subprocess
import sys

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from torch import nn

from distill import Distiller
from distill.cli import main
from ensemble import Ensemble
from ensemble.base.errors import DistillError
from ensemble.engine.fit import TRACKING_ENVIRONMENT
from helpers import distill, quick_train, runs_of

TRAINING_KIND = "custom_model_development"  # MLflow 3's `mlflow.experimentKind` for model training
IN_PROCESS = {"in_process": True, "show_progress": False}


class TinyCNN(nn.Module):
    """Conv(1->4, 3x3) on 8x8 digits, then a linear head: 4*9+4 = 40 and 4*6*6*10+10 = 1450 parameters."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.head(self.features(x))


TINY_CNN_PARAMETERS = 40 + 1450


@pytest.fixture
def no_mlflow_environment(monkeypatch):
    for name in TRACKING_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def _children(client: MlflowClient, run: mlflow.entities.Run) -> dict:
    found = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    names = [r.info.run_name for r in found]
    assert len(names) == len(set(names)), f"duplicate child runs: {sorted(names)}"
    return {r.info.run_name: r for r in found}


# --- item 3: a factory's run records the factory, not the config's registry model ---

def test_a_factory_model_is_recorded_as_the_factory(digits, tmp_path, no_mlflow_environment):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    options = {"tracking_uri": uri, "experiment": "cnn", **IN_PROCESS}
    ens = Ensemble(TinyCNN, {"members": 1, "train": quick_train(1)}, output_dir=tmp_path / "ens",
                   **options).fit(digits.train, digits.val)
    Distiller(ens, TinyCNN, {"train": quick_train(1), "baseline": False}, output_dir=tmp_path / "student",
              **options).fit(digits.train, digits.val)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("cnn")
    runs = client.search_runs([experiment.experiment_id])
    expected_hash = hashlib.sha256(repr(TinyCNN()).encode()).hexdigest()
    by_name = {r.info.run_name: r for r in runs}
    for name in ("member_0", "student"):
        params = by_name[name].data.params
        assert params["model.factory"] == f"{__name__}.TinyCNN", name
        assert params["model.parameters"] == str(TINY_CNN_PARAMETERS), name
        assert params["model.repr_sha256"] == expected_hash, name
    for run in runs:  # the children and the API's parent runs alike
        stale = sorted(k for k in run.data.params if k.startswith(("ensemble.model.", "student.model.")))
        assert not stale, f"{run.info.run_name} records the unused config model: {stale}"


# --- item 5: a reused model links to the run that trained it ---

def test_a_rerun_of_the_cli_links_the_runs_that_trained_its_models(tmp_path):
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    args = ["ensemble", "--output-dir", str(out), "--tracking-uri", uri, "--set", "ensemble.members=2",
            "--set", "ensemble.train.epochs=1", "--no-progress"]
    first = distill(*args)
    assert first.returncode == 0, first.stderr
    client, runs = runs_of(uri)
    trained = {r.info.run_name: r.info.run_id for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(trained) == ["generalist", "member_0", "member_1"]

    again = distill(*args)
    assert again.returncode == 0, again.stderr
    _, after = runs_of(uri)
    assert len(after) == len(runs) + 1, "a rerun that trains nothing adds its parent run only"
    results = json.loads((out / "results.json").read_text())
    parent = client.get_run(results["mlflow"]["parent_run_id"])
    assert {k: v for k, v in parent.data.tags.items() if k.startswith("reused.")} == {
        f"reused.{name}": run_id for name, run_id in trained.items()}
    note = parent.data.tags["mlflow.note.content"]
    assert all(f"/runs/{run_id})" in note for run_id in trained.values()), note
    assert [m["mlflow_run_id"] for m in results["ensemble"]["members"]] == [trained["member_0"], trained["member_1"]]
    assert results["generalist"]["mlflow_run_id"] == trained["generalist"]


def test_two_fits_under_the_callers_run_log_each_model_once(digits, tmp_path, monkeypatch, no_mlflow_environment):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what `mlflow.set_tracking_uri` does, undone after the test
    # Made by MLflow, as `mlflow.set_experiment` makes one, not by the library: no kind tag.
    experiment_id = MlflowClient(uri).create_experiment("mine", artifact_location=(tmp_path / "art").as_uri())
    config = {"members": 2, "train": quick_train(1)}
    student = {"temperature": 4.0, "train": quick_train(1), "baseline": False}
    with mlflow.start_run(experiment_id=experiment_id) as run:
        for _ in range(2):
            ens = Ensemble(TinyCNN, config, output_dir=tmp_path / "ens", **IN_PROCESS).fit(
                digits.train, digits.val, digits.test)
            dist = Distiller(ens, TinyCNN, student, output_dir=tmp_path / "student", **IN_PROCESS).fit(
                digits.train, digits.val, digits.test)
    assert all(r.reused for r in ens.results_ + dist.results_), "the second fit reuses every model"
    client = MlflowClient(uri)
    children = _children(client, run)
    assert sorted(children) == ["member_0", "member_1", "student"]
    parent = client.get_run(run.info.run_id)
    assert parent.data.tags["reused.member_1"] == children["member_1"].info.run_id
    assert parent.data.tags["reused.student"] == children["student"].info.run_id

    # item 13: the caller's run holds the stages' settings and final scores ...
    assert parent.data.params["ensemble.members"] == "2" and parent.data.params["student.temperature"] == "4.0"
    assert parent.data.metrics["student_test_accuracy"] == pytest.approx(dist.results_[0].metrics["test_accuracy"])
    assert parent.data.metrics["member_1_best_val_accuracy"] == pytest.approx(ens.results_[1].metrics["val_accuracy"])
    assert len(client.get_metric_history(run.info.run_id, "student_test_accuracy")) == 1, "logged once, not per fit"
    # ... the student is an MLflow model of its run, logged once and not registered unasked ...
    outputs = client.get_run(children["student"].info.run_id).outputs.model_outputs
    assert len(outputs) == 1 and dist.mlflow_model_["model_uri"] == f"models:/{outputs[0].model_id}"
    assert client.search_registered_models() == []
    # ... and the experiment MLflow made opens as model training, not GenAI.
    assert client.get_experiment_by_name("mine").tags["mlflow.experimentKind"] == TRAINING_KIND


def test_a_kind_the_user_gave_the_experiment_stays(digits, tmp_path, no_mlflow_environment):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.create_experiment("genai", tags={"mlflow.experimentKind": "genai_development"})
    client.create_experiment("plain")
    for name in ("genai", "plain"):
        Ensemble(TinyCNN, {"members": 1, "train": quick_train(1)}, output_dir=tmp_path / name, tracking_uri=uri,
                 experiment=name, **IN_PROCESS).fit(digits.train, digits.val)
    assert client.get_experiment_by_name("genai").tags["mlflow.experimentKind"] == "genai_development"
    assert client.get_experiment_by_name("plain").tags["mlflow.experimentKind"] == TRAINING_KIND


def test_the_api_logs_and_registers_the_student_when_asked(digits, tmp_path, no_mlflow_environment):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    options = {"tracking_uri": uri, "experiment": "reg", **IN_PROCESS}
    ens = Ensemble(TinyCNN, {"members": 1, "train": quick_train(1)}, output_dir=tmp_path / "ens", **options).fit(
        digits.train, digits.val)
    dist = Distiller(ens, TinyCNN, {"train": quick_train(1), "baseline": False, "registered_model": "mine"},
                     output_dir=tmp_path / "student", **options).fit(digits.train, digits.val)
    version = MlflowClient(uri).get_model_version_by_alias("mine", "champion")
    assert version.run_id == dist.run_ids_["student"] and dist.mlflow_model_["registered_version"] == "1"


# --- items 7, 8, 14: the store itself ---

@pytest.fixture(scope="module")
def made_store(tmp_path_factory):
    """A store with the experiment ``distill``, made once: a new store's schema takes seconds to create."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    make = f"from mlflow import MlflowClient; MlflowClient('sqlite:///{db}').create_experiment('distill')"
    subprocess.run([sys.executable, "-c", make], check=True, capture_output=True)
    return db


@pytest.mark.parametrize("table", ["runs", "latest_metrics", "experiment_tags", "inputs", "model_versions"])
def test_a_store_with_a_dropped_table_is_one_line(made_store, tmp_path, capsys, table):
    db = tmp_path / "mlflow.db"
    shutil.copy(made_store, db)
    with sqlite3.connect(db) as connection:
        connection.execute(f"DROP TABLE {table}")
    code = main(["ensemble", "--output-dir", str(tmp_path / "out"), "--tracking-uri", f"sqlite:///{db}",
                 "--set", "ensemble.members=1", "--set", "ensemble.train.epochs=1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    # MLflow recreates a dropped table of its first schema as that schema had it, so the runs table comes back
    # without the columns added since; a table added later stays missing.
    assert re.fullmatch(rf"error: tracking.uri: sqlite:///{db} is not a usable MLflow store \(no (table '{table}'|"
                        rf"column '{table}\.\w+')\); point --tracking-uri at a new file or repair it "
                        r"\(`mlflow db upgrade` migrates an old one\)", err[0]), err[0]
    assert not (tmp_path / "out" / "ensemble").exists(), "refused before anything was trained"


# A whole Python API fit in a process of its own: digits, one tiny member, one epoch, tracked in the store argv[1].
FIT_ONE = """
import sys
from ensemble import Ensemble
from ensemble.data.registry import load_dataset
from ensemble.models.registry import RegisteredModel

data = load_dataset("digits", seed=0)
Ensemble(RegisteredModel("mlp", (1, 8, 8), 10, {"hidden": [8]}), {"members": 1, "train": {"epochs": 1}},
         output_dir=sys.argv[2], tracking_uri=sys.argv[1], experiment="race", in_process=True,
         show_progress=False).fit(data.train, data.val)
"""


def test_two_processes_creating_one_new_store_both_succeed(tmp_path, no_mlflow_environment):
    for attempt in range(3):
        uri = f"sqlite:///{tmp_path}/new{attempt}.db"
        processes = [subprocess.Popen([sys.executable, "-c", FIT_ONE, uri, str(tmp_path / f"out{attempt}_{i}")],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        for process in processes:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, (attempt, stderr.strip().splitlines()[-3:])
        _, runs = runs_of(uri, "race")
        assert sorted(r.info.run_name for r in runs) == ["Ensemble", "Ensemble", "member_0", "member_0"]


def test_an_experiment_id_the_store_lacks_is_named(digits, tmp_path, monkeypatch, no_mlflow_environment):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "42")
    ens = Ensemble(TinyCNN, {"members": 1, "train": quick_train(1)}, output_dir=tmp_path / "ens", tracking_uri=uri,
                   **IN_PROCESS)
    with pytest.raises(DistillError) as raised:
        ens.fit(digits.train, digits.val)
    message = str(raised.value)
    assert message.startswith(f"tracking: experiment id 42 does not exist in {uri} (from MLFLOW_EXPERIMENT_ID")
    assert "mlflow experiments search" in message and "expected sqlite" not in message


def test_a_deleted_experiment_is_named(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    client.delete_experiment(client.create_experiment("distill"))
    capsys.readouterr()
    code = main(["ensemble", "--output-dir", str(tmp_path / "out"), "--tracking-uri", uri, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: tracking.experiment: experiment 'distill' (id 1) is deleted in {uri}; restore")
