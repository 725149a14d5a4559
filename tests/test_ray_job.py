"""``distill run`` submitted to a real Ray head (``ray start --head``, token auth on) as a Ray job."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from servers import ray_head, wait_for_job_agent

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--no-progress", "--set", "ensemble.members=2", "--set", "ensemble.train.epochs=1",
         "--set", "specialists.enabled=false", "--set", "student.train.epochs=1"]


@pytest.fixture(scope="module")
def head():

    with ray_head(num_cpus=2) as (address, dashboard):
        wait_for_job_agent(dashboard)
        yield address, dashboard


@pytest.fixture
def token_env(monkeypatch):
    # A head with token auth answers 401 until the client sends the token (from ~/.ray/auth_token).
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return {**os.environ, "RAY_AUTH_MODE": "token"}


def _check(out: Path, uri: str, stage: str = "student") -> None:
    results = json.loads((out / "results.json").read_text())
    assert len(results["ensemble"]["members"]) == 2 and stage in results
    client = MlflowClient(uri)
    assert client.get_run(results["mlflow"]["parent_run_id"]).info.status == "FINISHED"


def test_ray_job_submit_cli(head, token_env, tmp_path):
    _, dashboard = head
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    done = subprocess.run(
        [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", "--address", dashboard, "--working-dir", ".",
         "--", "distill", "run", "--output-dir", str(out), "--tracking-uri", uri, *QUICK],
        cwd=REPO, env=token_env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in (done.stdout + done.stderr).lower()
    _check(out, uri)


@pytest.mark.slow  # the same job as test_ray_job_submit_cli, through the Python SDK: 34 s more
def test_job_submission_client(head, token_env, tmp_path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    _, dashboard = head
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    client = JobSubmissionClient(dashboard)
    job_id = client.submit_job(
        entrypoint=" ".join(["distill", "ensemble", "--output-dir", str(out), "--tracking-uri", uri, *QUICK]),
        runtime_env={"working_dir": str(REPO)},
    )
    deadline = time.time() + 600
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, "job did not finish"
        time.sleep(2)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-3000:]
    assert "ensemble stage: test set" in client.get_job_logs(job_id)
    _check(out, uri, "ensemble")


@pytest.mark.slow  # Ray copies the 6-7 GB virtualenv: 113 s here
def test_job_with_a_pip_runtime_env(head, token_env, tmp_path):
    """A job whose runtime environment names its pip requirements: Ray builds a virtualenv for it (a clone of the
    head's own, which runs from one) and installs them there; the requirement is already installed, as the test
    machine is offline. The job's Python, and so ``distill``, come from that new environment."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    _skip_without_room_for_a_copy_of(Path(sys.prefix))
    _, dashboard = head
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    client = JobSubmissionClient(dashboard)
    probe = "import sys, yaml; print('job python:', sys.prefix)"
    job_id = client.submit_job(
        entrypoint=f'python -c "{probe}" && ' + " ".join(
            ["distill", "ensemble", "--output-dir", str(out), "--tracking-uri", uri, *QUICK]),
        runtime_env={"working_dir": str(REPO), "pip": ["pyyaml"]},
    )
    deadline = time.time() + 600
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.time() < deadline, "job did not finish"
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    prefix = next(line for line in logs.splitlines() if line.startswith("job python:")).split(": ", 1)[1]
    assert "runtime_resources" in prefix and "pip" in prefix and prefix != sys.prefix, prefix
    _check(out, uri, "ensemble")


def _skip_without_room_for_a_copy_of(environment: Path) -> None:
    """Ray copies the whole virtualenv for a pip runtime environment: skip (saying why) on a disk without room."""
    import shutil
    import tempfile

    size = sum(f.stat().st_size for f in environment.rglob("*") if f.is_file() and not f.is_symlink())
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < 1.5 * size:
        pytest.skip(f"a pip runtime environment copies {environment} ({size / 2**30:.1f} GiB); "
                    f"{free / 2**30:.1f} GiB free in {tempfile.gettempdir()}")


def test_the_head_refuses_requests_without_its_token(head):
    import urllib.error
    import urllib.request

    _, dashboard = head
    try:
        urllib.request.urlopen(f"{dashboard}/api/jobs/", timeout=10)
        raise AssertionError("the dashboard answered without a token: token authentication is off")
    except urllib.error.HTTPError as err:
        assert err.code == 401
