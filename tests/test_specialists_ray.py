"""SpecialistEnsemble on a real Ray and MLflow store, and ``distill specialists`` end to end."""

import pytest
import torch
from mlflow.tracking import MlflowClient

from ensemble import Tracker
from ensemble.base.errors import ConfigError
from ensemble.training.trainer import Trainer, TrainSpec
from specialists import SpecialistEnsemble

from helpers import quick_train, small_mlp_factory
from helpers import distill


@pytest.fixture(scope="module")
def weak_generalist(digits, tmp_path_factory):
    """Deliberately not perfect (tiny, two epochs), so the specialists have something to fix."""
    factory = small_mlp_factory(digits.input_shape, digits.num_classes, hidden=(16,))
    spec = TrainSpec("generalist", "generalist", factory, quick_train(2), seed=0)
    splits = {"train": digits.train, "val": digits.val}
    result = Trainer(spec, splits, tmp_path_factory.mktemp("generalist"), "g").fit()
    model = factory()
    model.load_state_dict(result.state_dict)
    return model.eval(), factory


@pytest.fixture(scope="module")
def fitted(ray_cpu, weak_generalist, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("spec")
    tracker = Tracker(f"sqlite:///{out}/mlflow.db", "spec-test")
    parent = tracker.start_run("parent")
    model, factory = weak_generalist
    spec = SpecialistEnsemble(model, generalist_factory=factory, count=3, train=quick_train(4, optimizer={"lr": 0.02}),
                              output_dir=out, tracker=tracker, parent_run_id=parent, show_progress=False)
    spec.fit(digits.train, digits.val, digits.test)
    tracker.end_run(parent)
    return spec, tracker, parent


def test_groups_partition_confusable_classes(fitted):
    spec, *_ = fitted
    assert 1 <= len(spec.groups) <= 3
    flat = [c for g in spec.groups for c in g]
    assert len(flat) == len(set(flat)), "disjoint without overlap"
    assert all(2 <= len(g) < 10 for g in spec.groups)


def test_specialists_fix_some_of_the_generalists_errors(fitted, digits):
    spec, *_ = fitted
    report = spec.evaluate(digits.test)
    generalist, combined = report["generalist"].errors, report["combined"].errors
    assert generalist > 20, "the generalist is weak enough to leave something to fix"
    assert combined < generalist
    rows = report.details["by_covering"]
    assert sum(r["examples"] for r in rows) == len(digits.test)
    assert sum(r["delta_correct"] for r in rows) == generalist - combined
    assert sum(c["combined_errors"] for c in report.details["per_class"]) == combined


def test_predict_proba_is_a_distribution_and_inactive_rows_keep_the_generalist(fitted, digits):
    spec, *_ = fitted
    x = digits.test.x[:64]
    q = spec.predict_proba(x)
    assert torch.allclose(q.sum(1), torch.ones(64), atol=1e-5)
    with torch.no_grad():
        p_g = torch.softmax(spec.generalist(x), 1)
    covered = torch.tensor([c for g in spec.groups for c in g])
    outside = ~torch.isin(p_g.argmax(1), covered)
    assert torch.allclose(q[outside], p_g[outside])
    assert spec.last_info_["iterations"] > 0


def test_each_specialist_has_a_nested_run_with_its_group(fitted):
    spec, tracker, parent = fitted
    client = MlflowClient(tracker.uri)
    runs = client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert len(runs) == len(spec.groups)
    for run in runs:
        assert run.data.tags["role"] == "specialist"
        index = int(run.data.tags["specialist_index"])
        assert run.data.params["group"] == str(spec.groups[index])
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 4


@pytest.mark.parametrize("override, message", [
    ("specialists.count=11", "specialists.count: 11 specialists for 10 classes"),
    ("specialists.groups=[[1, 7], [4]]", "specialists.groups[1]: a specialist needs at least two classes"),
    ("specialists.groups=[[1, 12]]", "specialists.groups[0]: unknown class 12"),
])
def test_bad_specialist_settings_are_checked_against_the_data(digits, override, message):
    from distill.config import load_config
    from specialists.stage import check_section

    with pytest.raises(ConfigError) as info:
        check_section(load_config(None, [override]).specialists, digits)
    assert str(info.value) == message or str(info.value).startswith(message)


def test_bad_specialist_input_fails_the_run_in_one_line(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    message = "specialists.count: 11 specialists for 10 classes"
    done = distill("specialists", "--output-dir", str(tmp_path / "out"), "--tracking-uri", uri, "--no-progress",
                   "--set", "ensemble.members=1", "--set", "ensemble.train.epochs=1", "--set", "specialists.count=11")
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {message}") and "Traceback" not in done.stderr
    # Checked against the data before any MLflow work (as a bad dataset is): no run to mark, nothing trained.
    assert not (tmp_path / "mlflow.db").exists() or MlflowClient(uri).get_experiment_by_name("distill") is None
    assert not (tmp_path / "out" / "ensemble").exists(), "checked against the data before any training"
