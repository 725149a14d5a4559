"""Real servers for tests, on loopback, started and stopped by process id (never by name)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 90.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_process_group(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the group this fixture started, then SIGKILL what is left."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)


@contextmanager
def _serving(args: list[str], log_path: Path, port: int, ready: str, timeout: float = 90.0, env: dict | None = None):
    """``python -m ARGS`` in a session of its own, logging to ``log_path``, until ``http://127.0.0.1:PORT{ready}``
    answers; stopped by its process group at the end."""
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True, env=env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}{ready}", timeout=timeout, process=process)
        yield
    finally:
        stop_process_group(process)
        log.close()


@contextmanager
def mlflow_server(root: Path):
    """``mlflow server`` with a SQLite backend and artifacts in ``root``, on 127.0.0.1 and a free port."""
    port = free_port()
    with _serving(["mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                   "--backend-store-uri", f"sqlite:///{root}/server.db", "--artifacts-destination",
                   str(root / "artifacts"), "--workers", "1"], root / "mlflow-server.log", port, "/health"):
        yield f"http://127.0.0.1:{port}"


@contextmanager
def model_server(model_uri: str, tracking_uri: str, root: Path):
    """``mlflow models serve`` for ``model_uri`` (resolved in ``tracking_uri``'s registry) with the local
    environment, on 127.0.0.1 and a free port; yields its base URL."""
    port = free_port()
    # MLflow runs `uvicorn` by name: the interpreter's own bin folder first, as with an activated environment.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_REGISTRY_URI": tracking_uri, "PATH": path}
    with _serving(["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local", "--host", "127.0.0.1",
                   "--port", str(port), "--workers", "1"], root / "model-server.log", port, "/ping", 120, env):
        yield f"http://127.0.0.1:{port}"


def _pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (a unique temp dir of ours): children that left the group."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="ignore"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _stop_node(process: subprocess.Popen, temp_dir: str, log) -> None:
    """Stop a ``ray start --block`` by its process group, then whatever it left running under its temp folder.
    A head given SIGTERM takes over 20 s to wind down here; what it would save is removed with the folder anyway."""
    stop_process_group(process, timeout=5.0)
    for pid in _pids_mentioning(temp_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log.close()


@contextmanager
def ray_head(num_cpus: int = 2, temp_dir: str | None = None):
    """``ray start --head --block`` on 127.0.0.1 with free ports; yields (gcs address, dashboard URL). Its temp
    folder (``temp_dir``, or a new one) is removed at the end."""
    import tempfile

    temp_dir = temp_dir or tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")  # short: Ray's Unix sockets live under it
    port, dashboard_port = free_port(), free_port()
    log = open(Path(temp_dir) / "head.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port),
         "--include-dashboard", "true", "--num-cpus", str(num_cpus), "--temp-dir", temp_dir,
         # Ray's fixed default ports collide with any other Ray on the machine (a CI run, a second fixture).
         "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
         "--ray-client-server-port", str(free_port())],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        # As from an activated environment: job entrypoints such as `distill run` resolve on PATH.
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        deadline = time.time() + 120
        while True:  # any HTTP answer (401 without a token) means the dashboard is up
            if process.poll() is not None:
                raise RuntimeError(f"ray start exited with {process.returncode}: "
                                   f"{(Path(temp_dir) / 'head.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{dashboard}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                if time.time() > deadline:
                    raise TimeoutError("the Ray dashboard did not come up")
                time.sleep(0.5)
        yield f"127.0.0.1:{port}", dashboard
    finally:
        _stop_node(process, temp_dir, log)
        # A pip runtime environment clones the whole virtualenv (gigabytes) under the temp folder.
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextmanager
def ray_worker(address: str, num_cpus: int = 1):
    """One more node for the head at ``address``: ``ray start --address ... --block`` on 127.0.0.1 with a temp folder
    of its own (so its copy of a job's working directory is its own, as on another machine); yields that folder."""
    import tempfile

    temp_dir = tempfile.mkdtemp(prefix="raynode-", dir="/tmp")  # short: Ray's Unix sockets live under it
    log_path = Path(temp_dir) / "node.log"
    log = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--address", address, "--block",
         "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--temp-dir", temp_dir,
         # Free ports, not Ray's fixed defaults, which the head on this machine holds already.
         "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
         "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
         "--min-worker-port", "0", "--max-worker-port", "0"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in log_path.read_text():
            if process.poll() is not None:
                raise RuntimeError(f"ray start exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            if time.time() > deadline:
                raise TimeoutError("the Ray worker node did not start")
            time.sleep(0.5)
        yield temp_dir
    finally:
        _stop_node(process, temp_dir, log)
        shutil.rmtree(temp_dir, ignore_errors=True)


def wait_for_job_agent(dashboard: str, seconds: float = 120) -> None:
    """The dashboard answers before its job agent is ready ("No available agent"): wait with a no-op job."""
    from ray.job_submission import JobSubmissionClient

    client, deadline = JobSubmissionClient(dashboard), time.time() + seconds
    while True:
        try:
            job = client.submit_job(entrypoint="true")
            break
        except RuntimeError as err:
            assert time.time() < deadline, f"the job agent never came up: {err}"
            time.sleep(1)
    while client.get_job_status(job) not in ("SUCCEEDED", "FAILED", "STOPPED"):
        assert time.time() < deadline, "the no-op job never finished"
        time.sleep(0.5)


def run_distill(args: list[str], timeout: float, env: dict | None = None,
                code: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """``distill ARGS`` (or ``python -c CODE ARGS``) in a session of its own; (result, seconds). On overrun it is
    killed with everything it started and the test fails: a hang must never hold up the suite."""
    import pytest

    env = env if env is not None else {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "distill.cli", *args]
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"distill {' '.join(args)} hung: no exit within {timeout:.0f} s")
    return subprocess.CompletedProcess(command, proc.returncode, out, err), time.monotonic() - started


@contextmanager
def moto_server(root: Path):
    """moto's standalone S3 (``python -m moto.server``) on 127.0.0.1 and a free port; yields its endpoint
    ``127.0.0.1:PORT``. Clients need credentials (any: ``testing``) in their own environment or URI."""
    port = free_port()
    with _serving(["moto.server", "-H", "127.0.0.1", "-p", str(port)], root / "moto-server.log", port,
                  "/moto-api/", 60):
        yield f"127.0.0.1:{port}"
