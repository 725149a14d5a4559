"""The library changes no process-wide state: importing it, training in process and drawing plots leave the
matplotlib backend, logger levels, environment variables and torch's global RNG as the caller had them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ensemble.models.registry import RegisteredModel
from ensemble.training.trainer import Trainer, TrainSpec

from helpers import quick_train

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("ensemble", "specialists", "distill")
NAMED = ("distill.cli", "distill.pipeline", "distill.plots", "distill.sweep", "distill.sweep_report", "distill.export",
         "specialists.grouping", "ensemble.track.tracking", "ensemble.training.trainer", "ensemble.models.registry",
         "ensemble.data.registry")

# Runs in a fresh interpreter: what the process looks like, as JSON-friendly values.
SNAPSHOT = textwrap.dedent("""
    import hashlib, logging, os

    def backend():
        import matplotlib
        try:
            return matplotlib.get_backend(auto_select=False)  # None while unresolved; resolving is itself a change
        except TypeError:  # matplotlib < 3.10
            return matplotlib.rcParams._get_backend_or_none()

    def snapshot():
        import torch
        loggers = {"": logging.getLogger(), **logging.Logger.manager.loggerDict}
        return {
            "backend": backend(),
            "loggers": {name: [lg.level, len(lg.handlers), lg.disabled] for name, lg in loggers.items()
                        if isinstance(lg, logging.Logger)},
            "environ": dict(os.environ),
            "torch_rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
            "torch_threads": torch.get_num_threads(),
        }
""")

IMPORT_ALL = textwrap.dedent("""
    import importlib, pkgutil

    def import_all():
        names = []
        for package in PACKAGES:
            names.append(package)
            module = importlib.import_module(package)
            for info in pkgutil.walk_packages(module.__path__, package + "."):
                importlib.import_module(info.name)
                names.append(info.name)
        return names
""")


def _python(code: str, env_changes: dict[str, str | None], timeout: int = 300) -> dict:
    env = dict(os.environ)
    for name, value in env_changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def third_party_modules(tmp_path_factory) -> Path:
    """Every module but the library's that importing the library loads. Importing them first, before the
    snapshot, leaves in the comparison only what the library's own code does (Ray, say, sets
    ``RAY_CLIENT_MODE`` and torch sets its loggers' levels when imported)."""
    code = IMPORT_ALL + textwrap.dedent(f"""
        import json, sys
        PACKAGES = {PACKAGES!r}
        import_all()
        print(json.dumps([name for name in list(sys.modules) if name.split(".")[0] not in PACKAGES]))
    """)
    path = tmp_path_factory.mktemp("modules") / "modules.json"
    path.write_text(json.dumps(_python(code, {})))
    return path


@pytest.mark.parametrize("mplbackend", [None, "pdf"])
def test_importing_the_library_changes_no_global_state(third_party_modules, mplbackend):
    code = SNAPSHOT + IMPORT_ALL + textwrap.dedent(f"""
        import importlib, json, sys
        PACKAGES = {PACKAGES!r}
        for name in json.loads(open({str(third_party_modules)!r}).read()):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - a private or platform-specific module; not the library's
                pass
        before = snapshot()
        # A write of a value the variable already had (inherited from this test's process, say) changes nothing
        # visible, so writes are caught as they happen too.
        env_writes = []
        sys.addaudithook(lambda event, args: event in ("os.putenv", "os.unsetenv") and env_writes.append(
            os.fsdecode(args[0])))
        imported = import_all()
        print(json.dumps({{"before": before, "after": snapshot(), "imported": imported, "env_writes": env_writes}}))
    """)
    seen = _python(code, {"MPLBACKEND": mplbackend})
    assert set(NAMED) <= set(seen["imported"])
    before, after = seen["before"], seen["after"]
    assert before["backend"] == (None if mplbackend is None else mplbackend)
    assert after["backend"] == before["backend"], "importing the library chose or switched matplotlib's backend"
    fresh = [0, 0, False]  # a logger the library creates: NOTSET, no handlers, enabled
    changed = {name: (before["loggers"].get(name), state) for name, state in after["loggers"].items()
               if before["loggers"].get(name, fresh) != state}
    assert changed == {}, f"logger levels or handlers changed at import: {changed}"
    assert after["environ"] == before["environ"], "importing the library changed os.environ"
    assert seen["env_writes"] == [], "importing the library wrote to os.environ"
    assert after["torch_rng"] == before["torch_rng"] and after["torch_threads"] == before["torch_threads"]


def _dropout_spec(digits, epochs: int = 2) -> TrainSpec:
    """Dropout draws from the global generator at every step, so training uses it, not only seeds it."""
    factory = RegisteredModel("mlp", tuple(digits.input_shape), digits.num_classes, {"hidden": [32], "dropout": 0.3})
    return TrainSpec("member_0", "member", factory, quick_train(epochs), seed=3)


class _Interrupt(Exception):
    pass


def _stop(record):
    raise _Interrupt


def test_training_in_process_leaves_the_callers_rng_alone(digits, tmp_path):
    spec = _dropout_spec(digits)
    splits = {"train": digits.train, "val": digits.val, "test": digits.test}
    weights = []
    for caller_seed in (1234, 99):
        torch.manual_seed(caller_seed)
        state = torch.get_rng_state()
        result = Trainer(spec, splits, tmp_path / str(caller_seed), spec.fingerprint("digits")).fit()
        assert torch.equal(torch.get_rng_state(), state), "training changed the caller's global torch RNG"
        weights.append(result.state_dict)
    for key, value in weights[0].items():  # and the caller's RNG does not change what is trained
        assert torch.equal(value, weights[1][key]), key

    state = torch.get_rng_state()
    with pytest.raises(_Interrupt):  # an interrupted fit restores it too
        Trainer(spec, splits, tmp_path / "interrupted", spec.fingerprint("digits")).fit(_stop)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("mplbackend", [None, "pdf"])
def test_plots_are_drawn_without_choosing_a_backend(tmp_path, mplbackend):
    code = SNAPSHOT + textwrap.dedent(f"""
        import json, sys
        from pathlib import Path

        import numpy as np

        from distill.plots import accuracy_per_model, training_curves
        from distill.sweep_report import plot_sweep
        from specialists.grouping import plot_covariance

        out = Path({str(tmp_path)!r})
        before = backend()
        history = [{{"epoch": e, "val_accuracy": 0.5 + e / 10, "train_loss": 1 / e}} for e in (1, 2, 3)]
        rows = [{{"model": "a", "test_accuracy": 0.9, "test_errors": 10}},
                {{"model": "b", "test_accuracy": 0.95, "test_errors": 5}}]
        figures = [training_curves({{"a": history}}), accuracy_per_model(rows),
                   plot_covariance(np.eye(4), [[0, 1]], list("abcd"))]
        files = []
        for i, figure in enumerate(figures):
            figure.savefig(out / f"figure{{i}}.png")
            files.append(str(out / f"figure{{i}}.png"))
        grid = [{{"x": x, "y": y, "test_accuracy": 0.9 + x / 100 + y / 1000}} for x in (1, 2) for y in (3, 4)]
        files += [str(p) for p in plot_sweep(grid, ["x", "y"], out)]
        pyplot = sys.modules.get("matplotlib.pyplot")
        print(json.dumps({{"before": before, "after": backend(), "files": files,
                          "pyplot_figures": pyplot.get_fignums() if pyplot else []}}))
    """)
    seen = _python(code, {"MPLBACKEND": mplbackend})
    assert seen["before"] == mplbackend
    assert seen["after"] == seen["before"], "drawing a plot chose or switched matplotlib's backend"
    assert seen["pyplot_figures"] == [], "figures were left open in pyplot"
    assert len(seen["files"]) == 5  # three figures, the sweep's heatmap and surface
    for path in seen["files"]:
        assert Path(path).read_bytes().startswith(b"\x89PNG"), path
