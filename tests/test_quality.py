"""The quality guard (ensemble/metrics/quality.py): a model at chance, or a student far below its baseline, is said
so in
``fit``'s warnings, the API's ``quality_``, ``results.json`` and the summary table."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from distill import Distiller
from ensemble import Ensemble
from ensemble.metrics.quality import (QualityWarning, assess, at_chance, base_rate, baseline_margin, chance_margin,
                                      far_below, verdict)
from specialists import SpecialistEnsemble

from helpers import quick_train, small_mlp_factory
from servers import run_distill

# --- the rules, on hand-computed values ---


def test_base_rate_is_the_larger_of_one_over_c_and_the_majority_share():
    assert base_rate(torch.tensor([0, 1, 2, 3] * 25), 4) == 0.25
    assert base_rate(torch.tensor([0, 0, 0, 1]), 2) == 0.75  # majority: 3 of 4
    assert base_rate(torch.tensor([0, 1, 2, 3]), 10) == 0.25  # only 4 classes present: 1 of 4 beats 1/10
    assert base_rate(torch.arange(10).repeat(10), 10) == pytest.approx(0.1)


def test_chance_margin_is_five_percent_of_the_room_or_two_sds_of_a_guesser():
    # 10 classes, 2,000 examples: 0.05 * 0.9 = 0.045 beats 2 * sqrt(0.1 * 0.9 / 2000) = 0.0134
    assert chance_margin(0.1, 2000) == pytest.approx(0.045)
    # 2 classes, 100 examples: 2 * sqrt(0.25 / 100) = 0.1 beats 0.05 * 0.5 = 0.025
    assert chance_margin(0.5, 100) == pytest.approx(0.1)
    assert at_chance(0.1035, 0.1, 2000)  # the CNN student: 0.1035 <= 0.145
    assert at_chance(0.145, 0.1, 2000) and not at_chance(0.1451, 0.1, 2000)
    assert at_chance(0.6, 0.5, 100) and not at_chance(0.61, 0.5, 100)


def test_far_below_is_ten_percent_of_the_baselines_skill_or_two_standard_errors():
    # baseline 0.9635, base 0.1: 0.1 * 0.8635 = 0.08635 beats 2 * sqrt((0.9635*0.0365 + 0.9*0.1) / 2000) = 0.0158
    assert baseline_margin(0.9, 0.9635, 0.1, 2000) == pytest.approx(0.08635)
    assert far_below(0.87, 0.9635, 0.1, 2000)  # 0.0935 behind
    assert not far_below(0.88, 0.9635, 0.1, 2000)  # 0.0835 behind
    # 50 examples: 2 * sqrt((0.9 * 0.1 + 0.8 * 0.2) / 50) = 0.1414 beats 0.1 * 0.8 = 0.08
    assert baseline_margin(0.8, 0.9, 0.1, 50) == pytest.approx(2 * math.sqrt(0.25 / 50))
    assert not far_below(0.8, 0.9, 0.1, 50)
    assert not far_below(0.97, 0.96, 0.1, 2000)  # a student above its baseline is never flagged


def _result(name, predictions, width):
    """A trained model's stand-in: its logits put 1 on the predicted class of each row."""
    logits = {split: nn.functional.one_hot(torch.tensor(p), width).float() for split, p in predictions.items()}
    return SimpleNamespace(name=name, logits=logits)


def test_assess_names_each_model_and_split_at_chance():
    labels = torch.tensor([0] * 60 + [1] * 20 + [2] * 20)  # base rate 0.6 (the majority)
    splits = {"val": SimpleNamespace(y=labels), "test": SimpleNamespace(y=labels)}
    constant = [0] * 100  # always the majority class: accuracy 0.6
    good = labels.tolist()[:90] + [1] * 10  # 90 right of 100
    found = assess([_result("lazy", {"val": constant, "test": constant}, 3),
                    _result("good", {"val": good, "test": good}, 3)], splits, 3)
    assert found["good"] == {"quality": "ok", "warnings": []}
    assert found["lazy"]["quality"] == "at chance"
    # margin: max(0.05 * 0.4, 2 * sqrt(0.6 * 0.4 / 100)) = 0.098; one line names both splits
    assert found["lazy"]["warnings"] == [(
        "lazy is at chance: val accuracy 0.6000 <= 0.6000 + 0.0980 (100 examples); test accuracy 0.6000 <= 0.6000 + "
        "0.0980 (100 examples), the base rate plus a margin. It learned nothing usable: check train.optimizer.lr (or "
        "set train.grad_clip_norm), the inputs' scale and the labels")]


def test_assess_maps_a_specialists_labels_and_keeps_only_the_classes_a_transfer_set_had():
    labels = torch.tensor([0, 1, 2, 3] * 25)
    splits = {"val": SimpleNamespace(y=labels)}
    # A specialist for {0}: dataset label 0 -> 0, the rest -> dustbin 1 (75% of the rows). Always dustbin: 0.75.
    dustbin = _result("specialist_0", {"val": [1] * 100}, 2)
    found = assess([dustbin], splits, 4, target_maps={"specialist_0": torch.tensor([0, 1, 1, 1])})
    assert found["specialist_0"]["quality"] == "at chance"
    # 30 classes, 20 rows each; a student taught only classes 0 and 1, right on them, says 0 elsewhere: 40 of 600
    # right, 0.0667 <= 1/30 + 0.05 * 29/30 = 0.0817 on all classes, but 1.0 on the two it was taught.
    labels = torch.arange(30).repeat(20)
    taught = _result("student", {"val": [c if c < 2 else 0 for c in labels.tolist()]}, 30)
    splits = {"val": SimpleNamespace(y=labels)}
    assert assess([taught], splits, 30)["student"]["quality"] == "at chance"
    assert assess([taught], splits, 30, classes=[0, 1])["student"]["quality"] == "ok"
    # Taught one class, a model has nothing to show beyond it: not judged.
    assert assess([taught], splits, 30, classes=[0])["student"]["quality"] == "ok"


def test_a_student_far_below_its_baseline_but_not_at_chance_gets_that_flag_alone():
    labels = torch.arange(10).repeat(100)  # 1,000 rows, base rate 0.1
    splits = {"val": SimpleNamespace(y=labels)}
    right = labels.tolist()
    half = [c if c < 5 else (c + 1) % 10 for c in right]  # right on classes 0-4 only: 0.5
    found = assess([_result("student", {"val": half}, 10), _result("student_baseline", {"val": right}, 10)],
                   splits, 10, students={"student": "student_baseline"})
    assert found["student"]["quality"] == "far below baseline"
    assert found["student"]["warnings"][0].startswith("student is far below its hard-label baseline: val accuracy "
                                                      "0.5000 against 1.0000, more than 0.0900 behind.")
    assert found["student_baseline"]["quality"] == "ok"
    assert verdict(["a"], ["b"]) == {"quality": "at chance, far below baseline", "warnings": ["a", "b"]}


# --- through the Python API ---


class ConstantNet:
    """A factory of a model that ignores its inputs: its weights are frozen at zero, so only the biases learn (the
    class prior) and every row gets the same class."""

    def __init__(self, features: int, classes: int):
        self.features, self.classes = features, classes

    def __call__(self) -> nn.Module:
        model = nn.Sequential(nn.Flatten(), nn.Linear(self.features, self.classes))
        nn.init.zeros_(model[1].weight)
        model[1].weight.requires_grad_(False)
        return model


STILL = quick_train(1, optimizer={"lr": 1e-9})


def test_ensemble_and_specialists_fit_warn_of_a_model_at_chance(digits, tmp_path):
    flat = int(np.prod(digits.input_shape))
    constant = ConstantNet(flat, digits.num_classes)
    good = small_mlp_factory(digits.input_shape, digits.num_classes)
    ens = Ensemble(constant, {"members": 1, "train": quick_train(2)}, generalist=good, generalist_train=quick_train(4),
                   in_process=True, output_dir=tmp_path / "ens", show_progress=False)
    with pytest.warns(QualityWarning) as caught:
        ens.fit(digits.train, digits.val, digits.test)
    assert caught[0].filename == __file__, "the warning points at the user's fit call"
    assert ens.quality_["member_0"]["quality"] == "at chance" and ens.quality_["generalist"]["quality"] == "ok"
    assert [str(w.message).split(": val accuracy")[0] for w in caught] == ["member_0 is at chance"]
    spec = SpecialistEnsemble(constant(), {"groups": [[3, 5]], "train": STILL}, generalist_factory=constant,
                              in_process=True, output_dir=tmp_path / "spec", show_progress=False)
    with pytest.warns(QualityWarning) as caught:
        spec.fit(digits.train, digits.val)
    assert [str(w.message).split(": val accuracy")[0] for w in caught] == ["specialist_0 is at chance"]
    assert spec.quality_["specialist_0"]["quality"] == "at chance"


class PermutedTeacher(nn.Module):
    """A teacher right on classes 0-4 that calls each of 5-9 the next one (9 -> 5): a student that follows it
    learns half the classes wrong, while the hard labels teach the baseline all of them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.register_buffer("order", torch.tensor([0, 1, 2, 3, 4, 9, 5, 6, 7, 8]))

    def forward(self, x):
        return self.model(x)[:, self.order]


def test_distiller_fit_warns_of_a_student_far_below_its_baseline(digits, tmp_path):
    train = quick_train(8)
    good = small_mlp_factory(digits.input_shape, digits.num_classes, hidden=(64,))
    teacher = Ensemble(good, {"members": 1, "train": train}, in_process=True, output_dir=tmp_path / "t",
                       show_progress=False).fit(digits.train, digits.val).members_[0]
    student = small_mlp_factory(digits.input_shape, digits.num_classes, hidden=(64,))
    d = Distiller(PermutedTeacher(teacher), student, {"temperature": 1, "alpha": 1.0, "train": train},
                  in_process=True, output_dir=tmp_path / "s", show_progress=False)
    with pytest.warns(QualityWarning) as caught:
        d.fit(digits.train, digits.val, digits.test)
    assert [str(w.message).split(": val accuracy")[0] for w in caught] == [
        "student is far below its hard-label baseline"]
    assert "; test accuracy" in str(caught[0].message)
    assert d.quality_["student"]["quality"] == "far below baseline"
    assert d.quality_["student_baseline"] == {"quality": "ok", "warnings": []}


# --- through the CLI: results.json, the summary table, the warning ---


@pytest.fixture(scope="module")
def noise_npz(tmp_path_factory):
    """Inputs that say nothing about their labels: every model trained on them is at chance."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("noise") / "noise.npz"
    np.savez(path, x_train=rng.normal(size=(4000, 1, 8, 8)).astype(np.float32), y_train=rng.integers(0, 10, 4000),
             x_test=rng.normal(size=(1000, 1, 8, 8)).astype(np.float32), y_test=rng.integers(0, 10, 1000))
    return path


def test_the_cli_flags_models_at_chance_in_results_summary_and_warnings(noise_npz, tmp_path):
    out = tmp_path / "out"
    done, _ = run_distill(["run", "--no-progress", "--output-dir", str(out), "--tracking-uri",
                           f"sqlite:///{tmp_path}/m.db", "--set", "data.name=npz", "--set", f"data.root={noise_npz}",
                           "--set", "ensemble.members=1", "--set", "ensemble.train.epochs=1",
                           "--set", "generalist.enabled=false", "--set", "specialists.enabled=false",
                           "--set", "student.train.epochs=1", "--set", "student.export=[torchscript]",
                           "--set", "student.registered_model=null"], timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    member, student = results["ensemble"]["members"][0], results["student"]
    assert member["quality"] == "at chance" and member["warnings"][0].startswith("member_0 is at chance: val")
    assert student["quality"] == "at chance" and student["baseline_quality"] == "at chance"
    assert student["warnings"][0].startswith("student is at chance: val accuracy")
    assert student["baseline_warnings"][0].startswith("student_baseline is at chance: val accuracy")
    rows = {row["model"]: row for row in results["summary"]}
    assert rows["member_0"]["quality"] == "at chance"
    assert [row["quality"] for name, row in rows.items() if name.startswith("student")] == ["at chance"] * 2
    assert rows["ensemble (arithmetic)"].get("quality") is None, "a combination is not assessed"
    table = done.stdout
    assert "AT CHANCE" in table and "warning: student is at chance: val accuracy" in table
    # The CLI shows each QualityWarning as one line of its own.
    warned = [line for line in done.stderr.splitlines() if line.startswith("warning: ")]
    assert [line.split(" is at chance")[0] for line in warned] == [
        "warning: member_0", "warning: student", "warning: student_baseline"], done.stderr
    assert "QualityWarning" not in done.stderr
    assert "AT CHANCE" in (out / "report.md").read_text()


# --- item 2: the student's defaults train a CNN with BatchNorm and a wide head ---


class Push:
    """An objective whose gradient is known by hand: d(100 · Σ params)/d(param) = 100 for every parameter."""

    def __call__(self, model, x, y, idx):
        return model(x), {"push": 100 * sum(p.sum() for p in model.parameters())}

    def to(self, device):
        return self

    def describe(self):
        return {"objective": "push"}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _zero_linear():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))  # 12 weights + 3 biases = 15 parameters
    for p in model.parameters():
        nn.init.zeros_(p)
    return model


@pytest.mark.parametrize("clip, step", [(None, -0.1 * 100), (1.0, -0.1 / math.sqrt(15))])
def test_grad_clip_norm_scales_a_larger_step_down_to_its_norm(clip, step, tmp_path):
    from ensemble.schema.sections import TrainConfig
    from ensemble.data.split import Split
    from ensemble.training.trainer import Trainer, TrainSpec

    data = {name: Split(torch.ones(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)) for name in ("train", "val")}
    train = TrainConfig(epochs=1, batch_size=8, optimizer={"lr": 0.1, "momentum": 0.0}, scheduler={"name": "none"},
                        select="last", grad_clip_norm=clip)
    spec = TrainSpec("m", "member", _zero_linear, train, objective=Push())
    result = Trainer(spec, data, tmp_path, spec.fingerprint("d")).fit()
    # One step of lr 0.1 on a gradient of 100 per parameter, norm 100·sqrt(15): clipped to norm 1, each
    # parameter moves by 0.1 · 100 / (100·sqrt(15)).
    for value in result.state_dict.values():
        assert torch.allclose(value, torch.full_like(value, step), rtol=1e-5)
    assert result.history[0].get("grad_clipped") == (None if clip is None else 1.0)


def test_the_students_default_clips_and_the_paper_configs_keep_their_settings():
    from distill.config import StudentConfig, load_config
    from ensemble.schema.sections import TrainConfig

    assert StudentConfig().train.grad_clip_norm == 5.0
    assert StudentConfig(train={"epochs": 2}).train.grad_clip_norm == 5.0, "a partial section keeps the default"
    assert StudentConfig(train=TrainConfig(epochs=2)).train.grad_clip_norm == 5.0
    assert StudentConfig(train={"grad_clip_norm": None}).train.grad_clip_norm is None
    assert TrainConfig().grad_clip_norm is None, "members, generalist and specialists train as before"
    assert "grad_clip_norm" not in TrainConfig().identity(), "unclipped models keep their fingerprints"
    for name in ("mnist_hinton", "mnist_3pct", "mnist_no3", "mnist_only78", "cifar100_wrn40_2_wrn16_2"):
        config = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
        assert config.student.train.grad_clip_norm is None, name
        assert "grad_clip_norm" not in config.student.train.identity(), name


def test_a_packed_ensemble_clips_its_members_gradients(digits, tmp_path):
    # Packs once refused train.grad_clip_norm; with one loop a pack clips each member by its own norm
    # (tests/test_packing.py checks it equals each member clipped alone).
    factory = small_mlp_factory(digits.input_shape, digits.num_classes)
    ens = Ensemble(factory, {"members": 2, "pack": 2, "train": quick_train(1, grad_clip_norm=1e-3)}, in_process=True,
                   output_dir=tmp_path, show_progress=False)
    ens.fit(digits.train, digits.val)
    assert [r.history[0]["grad_clipped"] for r in ens.results_] == [1.0, 1.0], "a tiny bound clips every step"


def _block(c_in: int, c_out: int) -> list:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]


class WideCnn:
    """The issue's student, Conv-BN-ReLU x2 + Linear on a 32 x 28 x 28 map, on digits scaled up to 28 x 28."""

    def __call__(self) -> nn.Module:
        return nn.Sequential(nn.Upsample(size=28), *_block(1, 16), *_block(16, 32), nn.Flatten(),
                             nn.Linear(32 * 28 * 28, 10))


def test_a_cnn_student_trains_with_the_default_student_settings(digits, tmp_path):
    teacher = Ensemble(small_mlp_factory(digits.input_shape, digits.num_classes, hidden=(64,)),
                       {"members": 1, "train": quick_train(10)}, in_process=True, output_dir=tmp_path / "t",
                       show_progress=False).fit(digits.train, digits.val)
    # Unclipped, the first steps blew the logits up, drove every BatchNorm shift of the last block below zero
    # and left all its ReLUs dead: the student sat at chance (0.106) for good (benchmarks/cnn_student.py).
    d = Distiller(teacher, WideCnn(), {"temperature": 4, "alpha": 0.9, "train": {"epochs": 2}}, in_process=True,
                  output_dir=tmp_path / "s", show_progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", QualityWarning)
        d.fit(digits.train, digits.val, digits.test)
    report = d.evaluate(digits.test)
    assert report["student"].accuracy > 0.85, report["student"].accuracy
    assert report["student"].accuracy >= report["baseline"].accuracy - 0.03
    assert d.quality_["student"]["quality"] == "ok"
