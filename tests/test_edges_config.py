"""The config and CLI boundary (issue 24, items 4, 9 and 11): strict YAML, the rules every string field obeys,
stage and teacher dependencies checked before anything exists, and plugin-registered names inside Ray actors.

Config errors go through the CLI's ``main`` (its one-line ``error:`` printing included) or a real ``distill``
process; dependency errors through real processes that must leave no folder and no MLflow run behind; the plugin
runs through ``main`` here, whose Ray actors and Tune trial never import the plugin.
"""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from distill.cli import main
from distill.config import Config, load_config
from ensemble.base.errors import ConfigError
from helpers import runs_of
from servers import run_distill

PLUGINS = Path(__file__).resolve().parent / "plugins"
SECONDS = 30
QUICK = ["--set", "ensemble.members=1", "--set", "ensemble.train.epochs=1", "--set", "student.train.epochs=1",
         "--set", "student.baseline=false", "--no-progress"]


def _one_error_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}: {lines}"
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "Traceback" not in err
    return lines[0]


# (id, config file text (bytes: written as is; None: no file), CLI arguments, what the one line must contain).
# {config} is the file's path.
CONFIG_CASES = [
    ("duplicate top-level key", "ensemble:\n  members: 1\nseed: 3\nensemble:\n  members: 2\n", [],
     ["{config}: line 4:", "'ensemble'", "first at line 1"]),
    ("duplicate nested key", "ensemble:\n  train:\n    epochs: 1\n    epochs: 2\n", [],
     ["{config}: line 4:", "'epochs'", "first at line 3"]),
    ("duplicate key in a --set mapping", None, ["--set", "ensemble.model.params={hidden: [8], hidden: [16]}"],
     ["--set ensemble.model.params=", "'hidden'", "twice"]),
    ("latin-1 file", "name: café\n".encode("latin-1"), [],
     ["{config}: not UTF-8", "line 1", "save the file as UTF-8"]),
    ("empty --output-dir", None, ["--output-dir", ""], ["--output-dir: output_dir: is empty"]),
    ("empty --tracking-uri", None, ["--tracking-uri", ""], ["--tracking-uri: tracking.uri: is empty"]),
    ("empty output_dir in the file", "output_dir: ''\n", [], ["{config}: output_dir: is empty"]),
    ("empty data.root by --set", None, ["--set", 'data.root=""'], ['--set data.root="": data.root: is empty']),
    ("empty tracking.experiment", "tracking:\n  experiment: ' '\n", [], ["tracking.experiment: is empty"]),
    ("empty plugin name", "imports: ['']\n", [], ["imports: is empty"]),
    ("output folder of an unsupported storage", None, ["--output-dir", "foo://bucket/runs"],
     ["--output-dir: output_dir: foo:// is not a storage", "s3://"]),
    ("object-store data root", "data:\n  name: npz\n  root: gs://bucket/data.npz\n", [],
     ["data.root: only local paths are supported for now"]),
    ("object-store decoded cache", None, ["--set", "data.decoded_cache=s3://bucket/cache"],
     ["data.decoded_cache: only local paths are supported for now"]),
    ("object-store plugin file", "imports: ['s3://bucket/plugin.py']\n", [], ["imports: only local paths"]),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_strings_are_one_line_naming_the_file_or_flag_and_the_key(case, tmp_path, capsys):
    _, text, args, expected = case
    config = []
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        config = [str(path)]
    code = main(["config", "show", *config, *args])
    line = _one_error_line(code, capsys.readouterr().err)
    for part in expected:
        assert part.format(config=path) in line, f"{line!r} lacks {part!r}"


def test_a_latin_1_and_a_duplicate_key_file_fail_in_one_line_in_a_real_process(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("ensemble:\n  members: 1\nname: Gödel\n".encode("latin-1"))
    twice = tmp_path / "twice.yaml"
    twice.write_text("ensemble:\n  members: 1\nensemble:\n  pack: 1\n")
    for path, words in ((latin, ["not UTF-8", "line 3"]), (twice, ["line 3:", "'ensemble'"])):
        done, seconds = run_distill(["ensemble", str(path), "--output-dir", str(tmp_path / "out"), "--tracking-uri",
                                     f"sqlite:///{tmp_path}/mlflow.db"], SECONDS)
        line = _one_error_line(done.returncode, done.stderr)
        assert line.startswith(f"error: {path}: ") and all(w in line for w in words), line
        assert seconds < SECONDS and not (tmp_path / "out").exists()


def test_flag_values_are_taken_literally_not_as_yaml(capsys):
    assert main(["config", "show", "--output-dir", "runs/a #1", "--tracking-uri", "2024"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["output_dir"] == "runs/a #1", "a '#' in a flag is no YAML comment"
    assert shown["tracking"]["uri"] == "2024", "a number-like flag stays a string (a folder named 2024)"


def test_a_leading_tilde_is_the_home_folder_in_every_path_field(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "home_plugin.py").write_text(
        "from distill import register_teacher\nfrom ensemble.training.teacher import ModuleTeacher\n\n"
        "@register_teacher('from_home')\ndef from_home(stages, config):\n"
        "    return ModuleTeacher(stages.ensemble.members_[0], 'from_home')\n")
    config = tmp_path / "tilde.yaml"
    config.write_text("output_dir: ~/runs/x\nimports: [~/home_plugin.py]\ndata:\n  root: ~/data\n"
                      "  decoded_cache: ~/cache\ntracking:\n  uri: sqlite:///~/mlflow.db\n"
                      "student:\n  teacher: from_home\n")
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "HOME": str(home)}
    done, _ = run_distill(["config", "show", str(config)], SECONDS, env=env)
    assert done.returncode == 0, done.stderr
    shown = yaml.safe_load(done.stdout)
    assert shown["output_dir"] == f"{home}/runs/x"
    assert (shown["data"]["root"], shown["data"]["decoded_cache"]) == (f"{home}/data", f"{home}/cache")
    assert shown["tracking"]["uri"] == f"sqlite:///{home}/mlflow.db"
    assert shown["imports"] == [f"{home}/home_plugin.py"] and shown["student"]["teacher"] == "from_home"
    done, _ = run_distill(["config", "show", "--tracking-uri", "~/mlruns"], SECONDS, env=env)
    assert yaml.safe_load(done.stdout)["tracking"]["uri"] == f"{home}/mlruns"


def _is_text(kind) -> bool:
    return kind is str or (typing.get_origin(kind) is typing.Annotated and typing.get_args(kind)[0] is str)


def _string_fields(model: type[BaseModel], prefix: str = ""):
    """Every field of the schema that holds text: (dotted key, whether it is a list of texts)."""
    for name, field in model.model_fields.items():
        kinds = [field.annotation, *typing.get_args(field.annotation)]  # ``X | None`` -> X, None
        section = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if section:
            yield from _string_fields(section[0], f"{prefix}{name}.")
        elif typing.get_origin(field.annotation) is dict:
            continue  # free-form: a model's params, a method's options, the sweep's grid
        elif typing.get_origin(field.annotation) is list:
            if _is_text(typing.get_args(field.annotation)[0]):
                yield f"{prefix}{name}", True
        elif any(_is_text(k) for k in kinds):
            yield f"{prefix}{name}", False


def test_every_text_field_of_the_schema_refuses_an_empty_value():
    fields = dict(_string_fields(Config))
    # the schema's own text fields, listed by hand so that the walk above cannot silently find none
    assert {"output_dir", "data.root", "data.decoded_cache", "tracking.uri", "tracking.experiment", "ray.address",
            "name", "imports", "student.export", "student.registered_model", "specialists.head"} <= set(fields)
    for key, is_list in fields.items():
        for empty in ("", "   "):
            value = [empty] if is_list else empty
            with pytest.raises(ConfigError) as info:
                load_config(None, [f"{key}={json.dumps(value)}"])
            assert key in str(info.value), (key, str(info.value))


# (id, command and arguments, the key the line must name)
DEPENDENCY_CASES = [
    ("specialists without a generalist", ["specialists", "--set", "generalist.enabled=false"],
     "needs generalist.enabled: true"),
    ("distill specialists with the stage off", ["specialists", "--set", "specialists.enabled=false"],
     "needs specialists.enabled: true"),
    ("generalist teacher without a generalist",
     ["run", "--set", "student.teacher=generalist", "--set", "generalist.enabled=false",
      "--set", "specialists.enabled=false"], "student.teacher: 'generalist' needs generalist.enabled: true"),
    ("specialists teacher with the stage off",
     ["run", "--set", "student.teacher=specialists", "--set", "specialists.enabled=false"],
     "student.teacher: 'specialists' needs specialists.enabled: true"),
    ("specialists teacher without a generalist",
     ["run", "--set", "student.teacher=specialists", "--set", "generalist.enabled=false"],
     "needs generalist.enabled: true"),
    ("sweep over a generalist teacher without a generalist",
     ["sweep", "--grid", "student.alpha=0.5", "--set", "student.teacher=generalist",
      "--set", "generalist.enabled=false"], "student.teacher: 'generalist' needs generalist.enabled: true"),
]


@pytest.mark.parametrize("case", DEPENDENCY_CASES, ids=[c[0] for c in DEPENDENCY_CASES])
def test_a_missing_stage_is_reported_before_anything_trains(case, tmp_path):
    _, args, expected = case
    out, db = tmp_path / "out", tmp_path / "mlflow.db"
    done, seconds = run_distill([*args, "--output-dir", str(out), "--tracking-uri", f"sqlite:///{db}", *QUICK],
                                SECONDS)
    line = _one_error_line(done.returncode, done.stderr)
    assert expected in line and "--set " in line, line
    assert seconds < SECONDS
    assert not out.exists(), f"nothing is created before the check: {sorted(p.name for p in out.rglob('*'))}"
    if db.exists():
        assert runs_of(f"sqlite:///{db}")[1] == [], "no MLflow run was started"


@pytest.fixture(scope="module")
def plugin_run(ray_cpu, tmp_path_factory):
    """``distill run`` whose members and student are a model, and whose loss a function, that only a plugin
    registers: the driver (this process) imports it, the Ray actors that train never do. What the plugin registered
    here is removed afterwards, so later tests see the registries as they were."""
    from distill import plugins

    saved, added = {kind: dict(entries) for kind, entries in plugins.registries().items()}, plugins.registered()
    root = tmp_path_factory.mktemp("plugin_model")
    config = {"imports": [str(PLUGINS / "tiny_plugin_mlp.py")], "output_dir": str(root / "out"),
              "generalist": {"enabled": False}, "specialists": {"enabled": False},
              "ensemble": {"model": {"name": "tiny_plugin_mlp"}},
              "student": {"model": {"name": "tiny_plugin_mlp", "params": {"hidden": 8}}, "loss": "plugin_kd",
                          "export": ["torchscript"]}}
    path = root / "plugin_model.yaml"
    path.write_text(yaml.safe_dump(config))
    uri = f"sqlite:///{root}/mlflow.db"
    yield path, uri, main(["run", str(path), "--tracking-uri", uri, *QUICK])
    for kind, entries in plugins.registries().items():
        entries.clear()
        entries.update(saved[kind])
    plugins._ADDED.clear()
    plugins._ADDED.update(added)


def test_a_plugin_model_and_loss_train_in_ray_actors_through_distill_run(plugin_run):
    path, uri, code = plugin_run
    assert code == 0
    results = json.loads((path.parent / "out" / "results.json").read_text())
    params = {row["model"]: row["params"] for row in results["summary"]}
    # tiny_plugin_mlp on 8x8 digits, 10 classes: 64*16 + 16 + 16*10 + 10 weights; the student's hidden=8: 64*8 + 8 +
    # 8*10 + 10 (the built-in mlp's defaults would give other counts)
    assert params["member_0"] == 1210 and results["student"]["params"] == 610
    assert results["student"]["loss"] == "plugin_kd"
    client, _ = runs_of(uri)
    history = client.get_metric_history(results["student"]["mlflow_run_id"], "train_plugin_soft")
    assert len(history) == 1, "the plugin's loss trained the student in its actor"


def test_a_sweep_trial_knows_the_plugin_names_too(plugin_run, capsys):
    """A Tune trial validates its own config and builds its student: its model and loss by name."""
    path, uri, code = plugin_run
    assert code == 0
    assert main(["sweep", str(path), "--tracking-uri", uri, "--grid", "student.temperature=2", *QUICK]) == 0, \
        capsys.readouterr().err[-2000:]
    [trial] = json.loads((path.parent / "out" / "results.json").read_text())["sweep"]["trials"]
    client, _ = runs_of(uri)
    assert client.get_metric_history(trial["mlflow_run_id"], "train_plugin_soft"), "the plugin's loss, in the trial"
