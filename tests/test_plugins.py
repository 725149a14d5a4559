"""A method and a teacher registered from outside the package, each in one file, run through ``distill run``."""

import json
from pathlib import Path

import pytest
import yaml

from distill.config import load_config
from ensemble.base.errors import ConfigError
from helpers import distill, runs_of

PLUGINS = Path(__file__).resolve().parent / "plugins"


def test_a_plugin_method_and_teacher_run_through_distill_run(tmp_path):
    config = {"imports": [str(PLUGINS / "scaled_kd.py"), str(PLUGINS / "first_member_teacher.py")],
              "output_dir": str(tmp_path / "out"), "generalist": {"enabled": False},
              "specialists": {"enabled": False},
              "ensemble": {"members": 1, "train": {"epochs": 2}},
              "student": {"teacher": "first_member", "method": "scaled_kd", "scaled_kd": {"scale": 0.25},
                          "baseline": False, "train": {"epochs": 2}}}
    path = tmp_path / "plugins.yaml"
    path.write_text(yaml.safe_dump(config))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = distill("run", str(path), "--tracking-uri", uri, "--no-progress")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    student = results["student"]
    assert student["teacher"] == "first_member" and student["method"] == "scaled_kd"
    member_0 = results["ensemble"]["members"][0]
    assert student["teacher_test_errors"] == member_0["test_errors"], "the teacher is member 0 alone"
    client, _ = runs_of(uri)
    history = client.get_metric_history(student["mlflow_run_id"], "train_scaled_soft")
    assert len(history) == 2, "the plugin's objective trained the student in its Ray actor"
    tags = client.get_run(student["mlflow_run_id"]).data.tags
    assert tags["method"] == "scaled_kd" and tags["teacher"] == "first_member"


def test_unknown_names_and_bad_plugin_options_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        load_config(None, ["student.method=nope"])
    with pytest.raises(ConfigError, match="unknown teacher 'nope'"):
        load_config(None, ["student.teacher=nope"])
    with pytest.raises(ConfigError, match="imports: file not found: missing.py"):
        load_config(None, ["imports=[missing.py]"])
    with pytest.raises(ConfigError, match="student.scaled_kd: scale"):
        load_config(None, [f"imports=[{PLUGINS / 'scaled_kd.py'}]", "student.method=scaled_kd",
                           "student.scaled_kd.scale=-1"])
