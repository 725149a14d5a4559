"""The pipeline's actors and driver log to a real ``mlflow server`` over HTTP; read back through MlflowClient."""

import json

import pytest
from mlflow.tracking import MlflowClient

from helpers import distill
from servers import mlflow_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


def test_pipeline_logs_everything_to_an_mlflow_server(server, tmp_path):
    out = tmp_path / "out"
    done = distill("run", "--output-dir", str(out), "--tracking-uri", server, "--no-progress",
                   "--set", "ensemble.members=2", "--set", "ensemble.train.epochs=2",
                   "--set", "specialists.train.epochs=2", "--set", "student.train.epochs=2",
                   "--set", "tracking.experiment=over-http")
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["mlflow"]["tracking_uri"] == server
    client = MlflowClient(server)
    parent = client.get_run(results["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    roles = sorted(r.data.tags["role"] for r in children)
    assert roles == ["generalist", "member", "member", *["specialist"] * len(results["specialists"]["groups"]),
                     "student", "student_baseline"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert len(client.get_metric_history(child.info.run_id, "val_accuracy")) >= 2, child.info.run_name
    top = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.yaml", "results.json", "report", "specialists"} <= top
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "specialists")} == {
        "specialists/class_matrix.png", "specialists/groups.json"}
    version = client.get_model_version("distilled-student", "1")
    assert version.run_id == results["student"]["mlflow_run_id"]
