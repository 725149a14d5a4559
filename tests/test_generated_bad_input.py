"""Generated bad input (tests/bad_inputs.py draws it, derandomized so CI is reproducible): invalid configs, invalid
npz datasets and damaged run folders, each through the CLI, each held to the promise.

Bad input: exit code 2, exactly one stderr line, starting ``error: ``, no traceback, within 30 s, and the finished
folder it ran against kept whole. A damaged file in a finished folder: a clean resume or retrain instead (exit 0,
the model folder finished again, the same model as before, the undamaged model reused untouched).

Most cases call ``distill.cli.main`` in this process (config and data errors end before Ray starts, so hundreds
fit); :func:`test_the_in_process_harness_tells_the_truth` runs one case of each kind through a real process too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import bad_inputs as gen
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import run_distill

from distill.cli import main
from ensemble.base.checkpoint import load_verified

CASE_SECONDS = 30
FAST = {"ensemble.members": 1, "ensemble.train.epochs": 1, "generalist.enabled": False}
FINISHED = ["--set", "ensemble.members=3", "--set", "ensemble.train.epochs=1", "--set", "generalist.enabled=false"]
SETTINGS = {"derandomize": True, "database": None, "deadline": None, "print_blob": False,
            "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]}
DRAWN: dict[str, int] = {}


@dataclass
class Outcome:
    code: int | str
    out: str
    err: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return self.err.strip().splitlines()


def cli(argv: list[str]) -> Outcome:
    """``distill ARGV`` in this process, its stdout and stderr captured; an exception escaping it is an outcome."""
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
        except BaseException as raised:  # noqa: BLE001 - reported as the outcome
            import traceback

            traceback.print_exc(file=err)
            code = f"raised {type(raised).__name__}"
    return Outcome(code, out.getvalue(), err.getvalue(), time.monotonic() - started)


def assert_one_line_error(outcome: Outcome, case, names: str | None = None) -> None:
    lines = outcome.lines
    assert outcome.code == 2, f"{case}: exit {outcome.code}, stderr {lines[-3:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: {lines}"
    assert "Traceback" not in outcome.err, case
    assert outcome.seconds < CASE_SECONDS, f"{case}: {outcome.seconds:.0f} s"
    if names is not None:
        assert names in lines[0], f"{case}: {lines[0]!r} does not name {names!r}"


def assert_kept(out: Path, before: dict[str, bytes], case) -> None:
    assert snapshot(out) == before, f"{case}: the failed run changed or deleted finished files"


def snapshot(folder: Path, rewritten: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every finished file's bytes, but for those any run rewrites: a lock's holder details, ``config.yaml``, and
    (``rewritten``) others a case expects to change."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (".lock", "config.yaml", *rewritten)}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One folder for every case, and one MLflow store (``mlflow.db``: its schema is made once, not per case)."""
    return tmp_path_factory.mktemp("cases")


@pytest.fixture(scope="module")
def finished(ray_cpu, work) -> Path:
    """Three finished 1-epoch members; each case runs against a copy."""
    outcome = cli(["ensemble", "--output-dir", str(work / "finished"), "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                   *FINISHED, "--no-progress"])
    assert outcome.code == 0, outcome.err
    return work / "finished"


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print("\ngenerated bad-input cases drawn:", DRAWN, "total", sum(DRAWN.values()))


def _count(family: str) -> None:
    DRAWN[family] = DRAWN.get(family, 0) + 1


def _case_dir(work: Path, finished: Path) -> tuple[Path, Path, str]:
    case = Path(tempfile.mkdtemp(dir=work))
    out = case / "out"
    shutil.copytree(finished, out)
    return case, out, f"sqlite:///{work}/mlflow.db"


def _base_sets(out: Path, uri: str) -> list[str]:
    sets = {"output_dir": str(out), "tracking.uri": uri, **FAST}
    return [a for key, value in sets.items() for a in ("--set", f"{key}={json.dumps(value)}")]


def _base_tree(out: Path, uri: str) -> dict:
    tree: dict = {}
    for key, value in {"output_dir": str(out), "tracking.uri": uri, **FAST}.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def _merge(tree: dict, path: tuple, value) -> dict:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        node = node.setdefault(part, {}) if isinstance(child, dict) or child is None else {}
    node[path[-1]] = value
    return tree


# --- the cases: (family, description, how to write the config, text the one line must contain) ---

def _config_families() -> dict:
    as_set = st.tuples(st.just("--set"), st.booleans())
    return {
        "unknown key": st.tuples(gen.unknown_key(), as_set),
        "invalid value": st.tuples(gen.invalid_leaf(), as_set),
        "bad --set": st.tuples(gen.bad_set_syntax(), st.just(("--set", True))),
        "duplicate key": st.tuples(gen.duplicate_key_yaml(), st.just(("yaml", False))),
        "not utf-8": st.tuples(st.just(None), st.just(("bytes", False))),
        "empty flag": st.tuples(st.sampled_from(["--output-dir", "--tracking-uri"]),
                                st.sampled_from([("''", False), ("'   '", False)])),
    }


CONFIG_FAMILIES = _config_families()


def _config_argv(family: str, drawn, how: tuple, case: Path, out: Path, uri: str, data) -> tuple[list[str], str]:
    """The CLI arguments of one config case, and what its line must name."""
    config = case / "config.yaml"
    base = _base_sets(out, uri)
    if family == "unknown key":
        path, names = drawn
        if how[1]:
            return [*base, "--set", f"{'.'.join(path)}=1"], names
        config.write_text(yaml.safe_dump(_merge(_base_tree(out, uri), path, 1)))
        return [str(config)], names
    if family == "invalid value":
        key, value = drawn
        if how[1]:
            return [*base, "--set", f"{key}={value}"], key
        config.write_text(yaml.safe_dump(_merge(_base_tree(out, uri), tuple(key.split(".")),
                                                yaml.safe_load(value))))
        return [str(config)], key
    if family == "bad --set":
        item, names = drawn
        return [*base, "--set", item], names
    # A file that does not parse: the base settings come as --set (they never fix a file YAML cannot read).
    if family == "duplicate key":
        text, key = drawn
        config.write_text(text)
        return [str(config), *base], key
    if family == "not utf-8":
        config.write_bytes(data.draw(gen.non_utf8_yaml(yaml.safe_dump(_base_tree(out, uri)))))
        return [str(config), *base], str(config)
    flag, value = drawn, how[0]
    return [*base, flag, yaml.safe_load(value)], flag


@pytest.mark.parametrize("family", sorted(CONFIG_FAMILIES))
@settings(max_examples=50, **SETTINGS)
@given(data=st.data())
def test_a_generated_bad_config_is_one_line_exit_2_and_loses_nothing(family, data, finished, work):
    drawn, how = data.draw(CONFIG_FAMILIES[family], label=family)
    _count(f"config: {family}")
    case_dir, out, uri = _case_dir(work, finished)
    argv, names = _config_argv(family, drawn, how, case_dir, out, uri, data)
    before = snapshot(out)
    outcome = cli(["ensemble", *argv, "--no-progress"])
    assert_one_line_error(outcome, (family, argv[-2:]), names)
    assert_kept(out, before, (family, argv[-2:]))
    shutil.rmtree(case_dir, ignore_errors=True)


def _write_npz(dataset: gen.Dataset, path: Path) -> None:
    if dataset.raw is not None:
        path.write_bytes(dataset.raw)
    else:
        np.savez(path, **dataset.arrays)


@settings(max_examples=40, **SETTINGS)
@given(dataset=gen.bad_dataset())
def test_a_generated_bad_dataset_is_one_line_exit_2_and_loses_nothing(dataset, finished, work):
    _count("dataset")
    case_dir, out, uri = _case_dir(work, finished)
    npz = case_dir / "data.npz"
    _write_npz(dataset, npz)
    before = snapshot(out)
    outcome = cli(["ensemble", *_base_sets(out, uri), "--set", "data.name=npz", "--set", f"data.root={npz}",
                   "--no-progress"])
    assert_one_line_error(outcome, dataset.defects, names="npz")
    assert_kept(out, before, dataset.defects)
    shutil.rmtree(case_dir, ignore_errors=True)


# --- damaged run folders ---

MEMBER_FILES = ("result.json", "mlflow.json", "model.pt", "model.pt.sha256", "logits.pt", "logits.pt.sha256",
                "checkpoints/epoch_0001.pt", "checkpoints/epoch_0001.pt.sha256")


def _members(out: Path) -> list[Path]:
    return sorted((out / "ensemble").glob("member_*"))


def damage(out: Path, data) -> list[tuple[str, str]]:
    """Files of every member but the last (one rerun repairs them side by side), or the results file, damaged;
    returns (file, how). The last member stays whole: it must be reused untouched."""
    targets = [[str(m.relative_to(out) / f) for f in MEMBER_FILES] for m in _members(out)[:-1]]
    chosen = [data.draw(st.lists(st.sampled_from(files), max_size=2, unique=True)) for files in targets]
    if data.draw(st.booleans()) or not any(chosen):
        chosen.append(["results.json"])
    done = []
    for target in (t for group in chosen for t in group):
        kind = data.draw(st.sampled_from(gen.JSON_DAMAGE if target.endswith(".json") else gen.BINARY_DAMAGE))
        gen.damage_file(out / target, kind, data.draw)
        done.append((target, kind))
    return done


def assert_finished_again(out: Path, original: Path, damaged: list, outcome: Outcome) -> None:
    """Exit 0, every member finished with the very model it had (a resume from the checkpoint, or a retrain from
    the same seed), the undamaged one reused untouched, no finished file lost, no temporary file left."""
    assert outcome.code == 0, f"{damaged}: exit {outcome.code}, stderr {outcome.lines[-3:]}"
    assert "Traceback" not in outcome.err and not any(ln.startswith("error:") for ln in outcome.lines), damaged
    assert outcome.seconds < CASE_SECONDS, f"{damaged}: {outcome.seconds:.0f} s"
    results = json.loads((out / "results.json").read_text())["ensemble"]["members"]
    old = json.loads((original / "results.json").read_text())["ensemble"]["members"]
    for i, (member, was) in enumerate(zip(_members(out), _members(original))):
        result = json.loads((member / "result.json").read_text())
        assert result["fingerprint"] == member.name.rsplit("-", 1)[1], (damaged, member.name)
        state, logits = load_verified(member / "model.pt"), load_verified(member / "logits.pt")
        assert state is not None and isinstance(logits, dict), (damaged, member.name)
        before = load_verified(was / "model.pt")
        assert all(torch.equal(state[k], before[k]) for k in before), f"{damaged}: {member.name} is another model"
        assert results[i]["test_accuracy"] == old[i]["test_accuracy"], (damaged, member.name)
        assert results[i]["epochs_trained"] == 1, (damaged, member.name)
    assert results[-1]["reused"] is True, damaged
    # mlflow.json may gain this case's store: the reused model's run there (ensemble.track.model_runs)
    assert snapshot(_members(out)[-1], ("mlflow.json",)) == snapshot(_members(original)[-1], ("mlflow.json",)), \
        f"{damaged}: the undamaged member was touched"
    untouched = [p for p in snapshot(original) if p not in {t for t, _ in damaged}]
    lost = [p for p in untouched if not (out / p).is_file()]
    assert not lost, f"{damaged}: lost {lost}"
    assert not list(out.rglob("*.tmp")), f"{damaged}: a temporary file was left"


@settings(max_examples=6, **SETTINGS)
@given(data=st.data())
def test_a_damaged_finished_folder_is_resumed_or_retrained_cleanly(data, finished, work):
    _count("damaged folder")
    case_dir, out, uri = _case_dir(work, finished)
    damaged = damage(out, data)
    outcome = cli(["ensemble", "--output-dir", str(out), "--tracking-uri", uri, *FINISHED, "--no-progress"])
    assert_finished_again(out, finished, damaged, outcome)
    shutil.rmtree(case_dir, ignore_errors=True)


# --- the harness against a real process ---

def _normalized(lines: list[str], root: Path) -> list[str]:
    return [ln.replace(str(root), "{root}") for ln in lines if "(TrainerActor" not in ln]


def _joins_test_ray() -> dict:
    """A real process's environment that joins this session's Ray, as a submitted job joins its cluster."""
    import ray

    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def test_the_in_process_harness_tells_the_truth(finished, work, tmp_path):
    """A config case and a dataset case, in this process and in a real one: the same exit code and the same line."""
    digits = gen._digits()
    digits["x_train"][3, 0, 1, 1] = np.nan
    cases = {
        "unknown key": lambda root: ["--set", "ensemble.trian.epochs=3"],
        "dataset": lambda root: ["--set", "data.name=npz", "--set", f"data.root={_npz(root, digits)}"],
    }
    for name, extra in cases.items():
        seen = []
        for how in ("in-process", "real"):
            root = tmp_path / f"{name.replace(' ', '_')}-{how}"
            root.mkdir()
            argv = ["ensemble", *extra(root), *_base_sets(root / "out", f"sqlite:///{work}/mlflow.db"), "--no-progress"]
            if how == "in-process":
                outcome = cli(argv)
            else:
                done, seconds = run_distill(argv, CASE_SECONDS, env=_joins_test_ray())
                outcome = Outcome(done.returncode, done.stdout, done.stderr, seconds)
            assert_one_line_error(outcome, (name, how))
            seen.append((outcome.code, _normalized(outcome.lines, root)))
        assert seen[0] == seen[1], f"{name}: in-process {seen[0]} but a real process {seen[1]}"


def test_a_truncated_result_json_resumes_the_model_with_one_warning_in_a_real_process(finished, work, tmp_path):
    """The issue's case: the model counts as unfinished and resumes from its checkpoint (not retrained: resumed at
    epoch 1 of 1), the driver's one warning names the file, and the rest is reused."""
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    result = _members(out)[0] / "result.json"
    result.write_bytes(result.read_bytes()[:40])
    done, seconds = run_distill(["ensemble", "--output-dir", str(out), "--tracking-uri", f"sqlite:///{work}/mlflow.db",
                                 *FINISHED, "--no-progress"], CASE_SECONDS, env=_joins_test_ray())
    warned = [ln for ln in done.stderr.splitlines() if "result.json" in ln and "(TrainerActor" not in ln]
    assert done.returncode == 0 and len(warned) == 1, done.stderr
    assert warned[0].startswith(f"{result} is unreadable (not JSON: ") and "resumes from its newest valid " \
        "checkpoint" in warned[0], warned[0]
    assert_finished_again(out, finished, [(str(result.relative_to(out)), "truncate")],
                          Outcome(done.returncode, done.stdout, done.stderr, seconds))
    members = json.loads((out / "results.json").read_text())["ensemble"]["members"]
    assert [(m["reused"], m["resumed_from_epoch"]) for m in members] == [(False, 1), (True, 0), (True, 0)]


def _npz(root: Path, arrays: dict) -> str:
    path = root / "data.npz"
    np.savez(path, **arrays)
    return str(path)
