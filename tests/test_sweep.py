"""``distill sweep``: grid parsing and checks, and a real 3x3 alpha x T grid on Ray Tune with MLflow runs."""

from __future__ import annotations

import json
import os

import pytest
from mlflow.tracking import MlflowClient

from distill.cli import main
from distill.config import load_config
from distill.sweep import check_grid, parse_grid, trial_config
from ensemble.base.errors import ConfigError


def test_grid_values_are_yaml_and_lists_go_in_brackets():
    grid = parse_grid(["student.temperature=1,2.5,20", "student.model.params.hidden=[30, 30],[300, 300]",
                       "student.loss=kd,logit_matching"])
    assert grid == {"student.temperature": [1, 2.5, 20], "student.model.params.hidden": [[30, 30], [300, 300]],
                    "student.loss": ["kd", "logit_matching"]}
    with pytest.raises(ConfigError, match="expected dotted.key"):
        parse_grid(["student.alpha"])


def test_every_trial_is_validated_before_anything_trains():
    config = load_config(None, ["sweep.grid={student.alpha: [0.5, 2.0]}"])
    with pytest.raises(ConfigError, match="student.alpha"):
        check_grid(config)
    with pytest.raises(ConfigError, match="not a student setting"):
        check_grid(load_config(None, ["sweep.grid={ensemble.members: [1, 2]}"]))
    with pytest.raises(ConfigError, match="sweep.grid: empty"):
        check_grid(load_config())
    trial = trial_config(load_config().model_dump(mode="json"), {"student.temperature": 8, "student.alpha": 0.1})
    assert (trial.student.temperature, trial.student.alpha, trial.student.baseline) == (8, 0.1, False)


def test_a_3x3_sweep_runs_on_tune_with_one_mlflow_run_per_trial(ray_cpu, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    code = main(["sweep", "--output-dir", str(out), "--tracking-uri", uri, "--no-progress",
                 "--grid", "student.temperature=1,4,20", "--grid", "student.alpha=0.1,0.5,0.9",
                 "--set", "ensemble.members=1", "--set", "ensemble.train.epochs=2", "--set", "generalist.enabled=false",
                 "--set", "student.train.epochs=2"])
    assert code == 0, capsys.readouterr().err
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ, "the sweep changed the caller's environment"
    # MLflow is the record: Tune's own CSV, JSON and TensorBoard loggers stay out.
    tune_files = [p.name for p in (out / "tune").rglob("*") if p.is_file()]
    assert tune_files and not [n for n in tune_files if n in {"progress.csv", "result.json"} or "tfevents" in n]
    sweep = json.loads((out / "results.json").read_text())["sweep"]
    assert len(sweep["trials"]) == 9
    assert {(t["student.temperature"], t["student.alpha"]) for t in sweep["trials"]} == {
        (t, a) for t in (1, 4, 20) for a in (0.1, 0.5, 0.9)}
    assert sweep["best"]["val_accuracy"] == max(t["val_accuracy"] for t in sweep["trials"])
    assert len({t["test_accuracy"] for t in sweep["trials"]}) > 1, "the settings reach the students"
    assert "sweep:" in capsys.readouterr().out

    client = MlflowClient(uri)
    parent = client.get_run(json.loads((out / "results.json").read_text())["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.info.run_name == "digits: sweep"  # config name: command
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    students = [r for r in children if r.data.tags.get("role") == "student"]
    assert len(students) == 9 and all(r.info.status == "FINISHED" for r in students)
    assert {r.data.params["student.temperature"] for r in students} == {"1.0", "4.0", "20.0"}
    assert all(len(client.get_metric_history(r.info.run_id, "val_accuracy")) == 2 for r in students)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/sweep_heatmap.png", "sweep/sweep_surface.png", "sweep/sweep.json"} <= artifacts
