"""Bad input, table-driven, through the real CLI in its own process with a hard 30 s limit: one line on stderr
naming the problem, exit code 2, no traceback (unless ``--debug``), the MLflow run FAILED when one was started,
finished work kept on disk, and never a hang (a dead cluster, a silent tracking server).

Errors found while validating the config, the output folder or the data (read and checked at load time) are reported
before any MLflow run exists (there is nothing to mark); errors found while running mark the parent run FAILED.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from distill.cli import main
from ensemble.base.checkpoint import load_verified, save_verified
from ensemble.models.registry import build_model
from servers import free_port, run_distill

CASE_SECONDS = 30
# A user's model that forgot to size its head to the dataset, registered in the CLI's own process.
SEVEN_OUTPUTS = (
    "import sys, numpy as np; from torch import nn; from ensemble.models.registry import register_model; "
    "register_model('seven_outputs')(lambda input_shape, num_classes, **p: "
    "nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 7))); "
    "from distill.cli import main; sys.exit(main())"
)

BASE = ["--set", "ensemble.members=2", "--set", "ensemble.train.epochs=1", "--set", "generalist.enabled=false",
        "--no-progress"]


@pytest.fixture(scope="module")
def finished(ray_cpu, tmp_path_factory) -> Path:
    """An output folder with two finished 1-epoch members, copied by each row that damages it."""
    root = tmp_path_factory.mktemp("finished")
    assert main(["ensemble", "--output-dir", str(root / "out"), "--tracking-uri",
                 f"sqlite:///{root}/mlflow.db", *BASE]) == 0
    return root / "out"


@pytest.fixture(scope="module")
def joins_test_ray(finished) -> dict:
    """The environment of a case that joins this session's Ray as a submitted job joins its cluster: each case then
    measures the CLI, not Ray's start and stop (the local Ray path runs end to end in test_cluster.py)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def _member_dirs(out: Path) -> list[Path]:
    return sorted((out / "ensemble").glob("member_*"))


def _npz(tmp: Path, damage) -> str:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:, None] / 16).astype(np.float32)
    y = digits.target.astype(np.int64)
    arrays = {"x_train": x[:1400], "y_train": y[:1400], "x_test": x[1400:], "y_test": y[1400:]}
    damage(arrays)
    path = tmp / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def _labels_out_of_range(arrays):
    arrays["y_test"][3] = 10


def _nan_inputs(arrays):
    arrays["x_train"][5, 0, 2, 2] = np.nan


def _stale_logits(out: Path) -> None:
    member = _member_dirs(out)[0]
    logits = load_verified(member / "logits.pt")
    logits["train"] = logits["train"][:100]
    save_verified(logits, member / "logits.pt")


def _unfinish(member: Path) -> Path:
    for name in ("result.json", "model.pt", "logits.pt"):
        (member / name).unlink()
    return sorted((member / "checkpoints").glob("epoch_*.pt"))[-1]


def _checkpoint_of_another_architecture(out: Path) -> None:
    latest = _unfinish(_member_dirs(out)[0])
    state = load_verified(latest)
    state["model"] = build_model("mlp", (1, 8, 8), 10, {"hidden": [16]}).state_dict()
    save_verified(state, latest)


def _checkpoint_of_another_model(out: Path) -> None:
    first, second = _member_dirs(out)
    latest = _unfinish(first)
    shutil.copy(sorted((second / "checkpoints").glob("epoch_*.pt"))[-1], latest)
    shutil.copy(sorted((second / "checkpoints").glob("epoch_*.pt.sha256"))[-1], latest.with_suffix(".pt.sha256"))


def _object_arrays(arrays):
    # Ragged inputs saved as a list of arrays: numpy stores them as an object array, readable only through pickle.
    ragged = np.empty(len(arrays["x_train"]), dtype=object)
    ragged[:] = list(arrays["x_train"])
    arrays["x_train"] = ragged


def _a_file(tmp: Path) -> str:
    (tmp / "taken").write_text("not a folder")
    return str(tmp / "taken")


# (id, extra CLI arguments, damage to a copy of the finished folder or to the npz, text the message must contain,
# run FAILED?). {tmp} is the case's temp dir, {npz} its damaged dataset, {port} a port where nothing listens,
# {file} a file where the output folder should go.
CASES = [
    ("unknown key", ["--set", "ensemble.trian.epochs=3"], None, "ensemble.trian", False),
    ("wrong type", ["--set", "ensemble.members=many"], None, "ensemble.members", False),
    ("negative value", ["--set", "student.temperature=-1"], None, "student.temperature", False),
    ("zero value", ["--set", "ensemble.train.epochs=0"], None, "ensemble.train.epochs", False),
    ("bad value named by its --set", ["--set", "student.temperature=abc"], None,
     "--set student.temperature=abc: student.temperature", False),
    ("unknown model", ["--set", "ensemble.model.name=transformer"], None, "transformer", False),
    ("missing config file", ["no_such_config.yaml"], None, "no_such_config.yaml", False),
    ("malformed --set", ["--set", "ensemble.members"], None, "ensemble.members", False),
    ("output folder is a file", ["--output-dir", "{file}"], None, "exists and is not a folder", False),
    ("output folder cannot be created", ["--output-dir", "/proc/distill-out"], None, "cannot create the folder",
     False),
    ("unsupported tracking URI", ["--tracking-uri", "foo://bar"], None, "MLflow cannot use 'foo://bar'", False),
    ("no tracking server answers", ["--tracking-uri", "http://127.0.0.1:{port}"], None,
     "no MLflow server answers at http://127.0.0.1:", False),
    ("no Ray cluster answers", ["--set", "ray.address=127.0.0.1:{port}"], None, "no Ray cluster answers at 127.0.0.1:",
     True),
    ("missing data files", ["--set", "data.name=mnist", "--set", "data.root={tmp}/nowhere"], None,
     "MNIST files not found", False),
    ("labels out of range", ["--set", "data.name=npz", "--set", "data.root={npz}"], _labels_out_of_range,
     "labels must lie in [0, 9]", False),
    ("NaN in inputs", ["--set", "data.name=npz", "--set", "data.root={npz}"], _nan_inputs, "NaN", False),
    ("object arrays in the npz", ["--set", "data.name=npz", "--set", "data.root={npz}"], _object_arrays,
     "x_train is an object array", False),
    ("model with the wrong output width", ["--set", "ensemble.model.name=seven_outputs"], None, "7", True),
    ("infeasible GPU request", ["--set", "ensemble.resources.num_gpus=1"], None, "num_gpus=1", True),
    ("diverging training", ["--set", "ensemble.train.optimizer.lr=1e30"], None, "training loss became", True),
    ("bad specialist group", ["--set", "specialists.enabled=true", "--set", "generalist.enabled=true",
                              "--set", "specialists.groups=[[0, 12]]"], None, "12", False),
    ("stale teacher cache", [], _stale_logits, "stale teacher cache", True),
    ("checkpoint from another architecture", [], _checkpoint_of_another_architecture, "does not fit the model", True),
    ("checkpoint from another model", [], _checkpoint_of_another_model, "belongs to another model", True),
]


def _prepare(damage, extra: list[str], finished: Path, tmp: Path, out: Path) -> list[str]:
    npz = ""
    if damage is not None and "{npz}" in " ".join(extra):
        npz = _npz(tmp, damage)
    elif damage is not None:
        shutil.copytree(finished, out)
        damage(out)
    file = _a_file(tmp) if "{file}" in " ".join(extra) else ""
    return [a.format(tmp=tmp, npz=npz, port=free_port(), file=file) for a in extra]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_within_30_s_and_loses_nothing(case, finished, joins_test_ray, tmp_path):
    name, extra, damage, expected, marks_failed = case
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    args = _prepare(damage, extra, finished, tmp_path, out)
    before = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    command = "specialists" if "specialists.enabled=true" in args else "ensemble"
    config = [args.pop(0)] if args and args[0].endswith(".yaml") else []
    # The case's own --output-dir / --tracking-uri come last, so they win over the defaults.
    cli_args = [command, *config, "--output-dir", str(out), "--tracking-uri", uri, *BASE, *args]

    env = None if any(a.startswith("ray.address=") for a in args) else joins_test_ray  # RAY_ADDRESS would win
    done, seconds = run_distill(cli_args, CASE_SECONDS, env=env,
                                code=SEVEN_OUTPUTS if "seven_outputs" in " ".join(args) else None)

    code, stderr = done.returncode, done.stderr
    err = stderr.strip().splitlines()
    assert code == 2, f"{name}: exit {code}, stderr {err}"
    assert len(err) == 1 and err[0].startswith("error: "), f"{name}: {err}"
    assert expected in err[0], f"{name}: {err[0]!r} does not mention {expected!r}"
    assert "Traceback" not in stderr
    assert seconds < CASE_SECONDS

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("distill")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if marks_failed:
        assert [r.info.status for r in parents] == ["FAILED"], name
    else:
        assert parents == [], f"{name}: an error in the config or the output folder is reported before any run"
    lost = [str(p.relative_to(out)) for p in before if not p.exists()]
    assert not lost, f"{name}: the failed run deleted {lost}"


def test_debug_shows_the_traceback(capsys):
    assert main(["config", "show", "--set", "ensemble.members=0", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_after_a_stale_cache_is_deleted_the_rerun_recomputes_it_and_reuses_the_rest(finished, tmp_path):
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    shutil.copytree(finished, out)
    _stale_logits(out)
    assert main(["ensemble", "--output-dir", str(out), "--tracking-uri", uri, *BASE]) == 2
    first = _member_dirs(out)[0]
    (first / "logits.pt").unlink()  # what the message says to do
    assert main(["ensemble", "--output-dir", str(out), "--tracking-uri", uri, *BASE]) == 0
    logits = torch.load(first / "logits.pt", weights_only=True)
    assert len(logits["train"]) > 100, "recomputed from model.pt and the checkpoint, not retrained"
    import json

    results = json.loads((out / "results.json").read_text())
    assert [m["reused"] for m in results["ensemble"]["members"]] == [False, True]
    assert results["ensemble"]["members"][0]["epochs_trained"] == 1
