"""Screenshot the MLflow UI's experiment page with headless Chromium: proof that the runs render for real.

    apt-get install chromium          # Debian's package; not needed by the library or its tests
    python tools/mlflow_ui_screenshot.py --store sqlite:///mlflow.db --experiment distill-mnist-hinton

Starts ``mlflow server`` on 127.0.0.1 (a free port) over the given store, opens the experiment page (and the
first parent run's page) in headless Chromium, writes PNGs, and stops the server it started, by process group.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"mlflow server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"mlflow server at {url} not healthy after {timeout:.0f} s")


def screenshot(chromium: str, url: str, out: Path, height: int = 1000) -> None:
    # The UI is a single-page app: the virtual time budget lets its requests finish before the capture.
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size=1600,{height}", "--virtual-time-budget=20000", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)
    print(f"{url} -> {out} ({out.stat().st_size:,} bytes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=f"sqlite:///{REPO / 'mlflow.db'}", help="backend store URI")
    parser.add_argument("--experiment", default="distill", help="experiment name")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"), help="folder for the PNGs")
    parser.add_argument("--run-height", type=int, default=1900, help="pixels: the run page lists every metric")
    parser.add_argument("--order-by", help="a metric to sort the runs by, which the runs table then shows as a "
                        "column (say, student_test_ece)")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found: apt-get install chromium")

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    artifacts = Path(args.store.removeprefix("sqlite:///")).parent / "mlruns"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", args.store, "--artifacts-destination",
         str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_healthy(url, server)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(url)
        experiment = client.get_experiment_by_name(args.experiment)
        if experiment is None:
            sys.exit(f"--experiment: no experiment named {args.experiment!r} in {args.store}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        if experiment.tags.get("mlflow.experimentKind") is None:  # stores made before the library set it
            client.set_experiment_tag(experiment.experiment_id, "mlflow.experimentKind", "custom_model_development")
        query = ""
        if args.order_by:
            from urllib.parse import quote

            query = f"?orderByKey={quote(f'metrics.`{args.order_by}`')}&orderByAsc=true"
        screenshot(chromium, f"{url}/#/experiments/{experiment.experiment_id}/runs{query}",
                   out / "mlflow_ui_experiment.png")
        parents = [r for r in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
                   if "mlflow.parentRunId" not in r.data.tags and r.info.status == "FINISHED"]
        if parents:
            # A tall window: the run page lists every metric of the parent run, the calibration ones among them.
            run_url = f"{url}/#/experiments/{experiment.experiment_id}/runs/{parents[0].info.run_id}"
            screenshot(chromium, run_url, out / "mlflow_ui_run.png", height=args.run_height)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
