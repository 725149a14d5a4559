"""``distill ensemble`` end to end, as a user runs it: a real process, a real Ray, a real MLflow store."""

import json

from mlflow.tracking import MlflowClient

from helpers import distill, runs_of

QUICK = ["--set", "ensemble.train.epochs=3", "--no-progress"]


def test_ensemble_command_writes_results_and_runs_then_reuses_them(tmp_path):
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    done = distill("ensemble", "--output-dir", str(out), "--tracking-uri", uri, *QUICK)
    assert done.returncode == 0, done.stderr
    assert "ensemble (geometric mean)" in done.stdout
    results = json.loads((out / "results.json").read_text())
    assert len(results["ensemble"]["members"]) == 3
    for member in results["ensemble"]["members"]:
        assert 0.5 < member["test_accuracy"] <= 1
    assert 0.5 < results["ensemble"]["test_accuracy"] <= 1
    assert 0.5 < results["generalist"]["test_accuracy"] <= 1
    assert results["mlflow"]["tracking_uri"].endswith("mlflow.db")
    assert (out / "config.yaml").is_file()

    client, runs = runs_of(uri)
    parent = results["mlflow"]["parent_run_id"]
    assert client.get_run(parent).info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert sorted(r.data.tags["role"] for r in children) == ["generalist", "member", "member", "member"]
    for child in children:
        assert len(client.get_metric_history(child.info.run_id, "train_loss")) == 3
        assert child.data.params["ensemble.train.epochs"] == "3", "the resolved config is logged as params"

    again = distill("ensemble", "--output-dir", str(out), "--tracking-uri", uri, *QUICK)
    assert again.returncode == 0, again.stderr
    rerun = json.loads((out / "results.json").read_text())
    assert all(m["reused"] for m in rerun["ensemble"]["members"]) and rerun["generalist"]["reused"]
    assert rerun["ensemble"]["test_accuracy"] == results["ensemble"]["test_accuracy"]
    assert rerun["mlflow"]["parent_run_id"] != parent


def test_missing_data_fails_in_one_line_before_any_run_starts(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = distill("ensemble", "--output-dir", str(tmp_path / "out"), "--tracking-uri", uri,
                   "--set", "data.name=mnist", "--set", f"data.root={tmp_path / 'empty'}", *QUICK)
    assert done.returncode == 2
    err = done.stderr.strip().splitlines()
    assert err[-1].startswith("error: data.root: MNIST files not found under") and "Traceback" not in done.stderr
    # The data is read and checked before any MLflow work, so no run is left behind to mark FAILED.
    assert not (tmp_path / "mlflow.db").exists() or MlflowClient(uri).get_experiment_by_name("distill") is None
