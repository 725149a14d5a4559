"""The README's Python API examples run as written (in a fresh process, against a real MLflow store)."""

import re
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

README = Path(__file__).resolve().parents[1] / "README.md"


def python_api_blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Python API\n"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_python_api_examples_run_and_track_every_model(tmp_path):
    blocks = python_api_blocks()
    assert len(blocks) == 3, "the main example, a teacher and a method"
    script = tmp_path / "example.py"
    script.write_text("\n\n".join(blocks))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(README.parent)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    accuracies = [float(v) for v in done.stdout.split()[-3:-1]]
    assert all(0.5 < a <= 1 for a in accuracies), done.stdout
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("my-ensembles")
    (parent,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'digits'")
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 3 + 1 + 2 + 2, "members, generalist, specialists, student and baseline"
    assert (tmp_path / "runs" / "my-student" / "student.pt2").is_file()
