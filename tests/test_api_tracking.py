"""MLflow from the Python API, as MLflow users expect: nested under an active run, or where the arguments or
MLflow's environment variables say, or nowhere."""

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from distill import Distiller
from ensemble import Ensemble
from ensemble.engine.fit import TRACKING_ENVIRONMENT
from helpers import quick_train, small_mlp_factory
from specialists import SpecialistEnsemble


@pytest.fixture
def no_mlflow_environment(monkeypatch):
    for name in TRACKING_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def _children(client: MlflowClient, experiment_id: str, parent_id: str) -> dict:
    runs = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    return {run.info.run_name: run for run in runs}


def test_every_model_nests_under_the_active_run(digits, tmp_path, monkeypatch, no_mlflow_environment):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # what `mlflow.set_tracking_uri` does, undone after the test
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("api", artifact_location=(tmp_path / "artifacts").as_uri())
    factory = small_mlp_factory(digits.input_shape, digits.num_classes)
    common = {"in_process": True, "show_progress": False}
    with mlflow.start_run(experiment_id=experiment_id) as run:
        ens = Ensemble(factory, {"members": 2, "train": quick_train(2)}, generalist=factory,
                       output_dir=tmp_path / "ens", **common).fit(digits.train, digits.val, digits.test)
        SpecialistEnsemble(ens.generalist_, {"count": 2, "train": quick_train(1)}, generalist_factory=factory,
                           output_dir=tmp_path / "spec", **common).fit(digits.train, digits.val)
        Distiller(ens, factory, {"temperature": 4.0, "train": quick_train(2)}, output_dir=tmp_path / "student",
                  **common).fit(digits.train, digits.val)
    children = _children(client, experiment_id, run.info.run_id)
    assert sorted(children) == ["generalist", "member_0", "member_1", "specialist_0", "specialist_1", "student",
                                "student_baseline"]
    for name, child in children.items():
        assert child.info.status == "FINISHED", name
        assert len(client.get_metric_history(child.info.run_id, "train_loss")) >= 1, name
    assert children["student"].data.params["student.temperature"] == "4.0", "the section is logged as params"
    assert client.get_run(run.info.run_id).info.status == "FINISHED", "the user's run is the user's to end"


def test_arguments_give_a_parent_run_and_nothing_is_tracked_without_them(digits, tmp_path, no_mlflow_environment,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    factory = small_mlp_factory(digits.input_shape, digits.num_classes)
    options = {"in_process": True, "show_progress": False, "n_members": 1, "train": quick_train(1)}
    Ensemble(factory, output_dir=tmp_path / "untracked", **options).fit(digits.train, digits.val)
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    Ensemble(factory, output_dir=tmp_path / "tracked", tracking_uri=uri, experiment="mine",
             **options).fit(digits.train, digits.val)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mine")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.api = 'Ensemble'")
    assert parent.info.status == "FINISHED" and parent.info.run_name == "Ensemble"
    assert sorted(_children(client, experiment.experiment_id, parent.info.run_id)) == ["member_0"]
