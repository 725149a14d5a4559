"""One orchestration for ``distill run`` and ``distill sweep``: what every student's teacher needs is asked once,
before any folder, MLflow run or model exists, and it decides which stages train."""

from __future__ import annotations

import pytest

from distill.cli import main
from distill.config import load_config
from distill.needs import check_needs
from distill.pipeline import run
from distill.sweep import check_grid, run_sweep, trial_teachers
from ensemble.api import Ensemble
from ensemble.base.errors import ConfigError
from specialists.api import SpecialistEnsemble

REFUSED = "student.teacher: 'specialists' needs specialists.enabled: true"
OFF = ["--set", "specialists.enabled=false"]


@pytest.fixture
def no_training(monkeypatch):
    """Every stage's fit, recorded and stopped: a check that comes too late shows up as a fit, not as a slow test."""
    fits = []

    def fit(self, *args, **kwargs):
        fits.append(type(self).__name__)
        raise AssertionError(f"{type(self).__name__} was fitted before the config was refused")

    monkeypatch.setattr(Ensemble, "fit", fit)
    monkeypatch.setattr(SpecialistEnsemble, "fit", fit)
    return fits


def _refused(args: list[str], tmp_path, capsys, fits: list) -> str:
    out, db = tmp_path / "out", tmp_path / "mlflow.db"
    code = main([*args, "--output-dir", str(out), "--tracking-uri", f"sqlite:///{db}", "--no-progress"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert fits == [], "a model was fitted before the refusal"
    assert not out.exists(), f"the output folder was made: {sorted(p.name for p in out.rglob('*'))}"
    assert not db.exists(), "an MLflow store (and so a run) was opened"
    return lines[0]


def test_run_refuses_a_specialists_teacher_without_the_stage_before_anything_trains(tmp_path, capsys, no_training):
    line = _refused(["run", "--set", "student.teacher=specialists", *OFF], tmp_path, capsys, no_training)
    assert REFUSED in line and "--set specialists.enabled=true" in line, line


def test_sweep_refuses_a_specialists_teacher_without_the_stage_before_anything_trains(tmp_path, capsys,
                                                                                      no_training):
    line = _refused(["sweep", "--grid", "student.alpha=0.5,0.9", "--set", "student.teacher=specialists", *OFF],
                    tmp_path, capsys, no_training)
    assert REFUSED in line, line


def test_sweep_asks_every_trial_teacher_not_only_the_configs_own(tmp_path, capsys, no_training):
    # The config's teacher (ensemble) needs nothing; the grid's second teacher needs the specialist stage.
    line = _refused(["sweep", "--grid", "student.teacher=ensemble,specialists", *OFF], tmp_path, capsys, no_training)
    assert "sweep.grid student.teacher: 'specialists' needs specialists.enabled: true" in line, line


def test_the_pipeline_functions_refuse_before_the_output_folder_exists(tmp_path, no_training):
    out = tmp_path / "out"
    config = load_config(None, ["student.teacher=specialists", "specialists.enabled=false", f"output_dir={out}",
                                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", "sweep.grid={student.alpha: [0.5]}"])
    for command in (run, run_sweep):
        with pytest.raises(ConfigError) as info:
            command(config, show_progress=False)
        assert str(info.value).startswith(REFUSED) and "\n" not in str(info.value), str(info.value)
    assert no_training == [] and not out.exists()


def test_the_needs_decide_which_stages_train():
    on = load_config(None, ["specialists.enabled=true"])
    # distill run trains an enabled specialist stage for its report, whatever the teacher
    assert "specialists.enabled" in check_needs(on, "run", {"ensemble": "student.teacher"})
    # distill ensemble never does, and a sweep only for a trial teacher built from it
    assert "specialists.enabled" not in check_needs(on, "ensemble", {})
    assert "specialists.enabled" not in check_needs(on, "sweep", {"ensemble": "student.teacher"})
    grid = load_config(None, ["specialists.enabled=true", "sweep.grid={student.teacher: [ensemble, specialists]}"])
    teachers = trial_teachers(grid, check_grid(grid))
    assert teachers == {"ensemble": "student.teacher", "specialists": "sweep.grid student.teacher"}
    assert {"specialists.enabled", "generalist.enabled"} <= check_needs(grid, "sweep", teachers)
