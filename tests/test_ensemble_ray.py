"""The Python API on a real local Ray (2 CPUs), logging to a real MLflow SQLite store."""

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from ensemble import Ensemble, Tracker
from ensemble.base.errors import ModelError, ResourceError
from ensemble.training.soft_targets import ensemble_probs

from helpers import quick_train, small_mlp_factory

pytestmark = pytest.mark.usefixtures("ray_cpu")


@pytest.fixture(scope="module")
def fitted(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("ens")
    uri = f"sqlite:///{out}/mlflow.db"
    tracker = Tracker(uri, "api-test")
    parent = tracker.start_run("parent")
    factory = small_mlp_factory(digits.input_shape, digits.num_classes)
    ens = Ensemble(factory, n_members=3, generalist=factory, train=quick_train(3), seed=0,
                   output_dir=out, tracker=tracker, parent_run_id=parent, show_progress=False)
    ens.fit(digits.train, digits.val, digits.test)
    tracker.end_run(parent)
    return ens, tracker, parent, out


def test_members_differ_and_the_ensemble_scores(fitted, digits):
    ens, *_ = fitted
    assert len(ens.members_) == 3 and ens.generalist_ is not None
    w0, w1 = (dict(m.named_parameters())["1.weight"] for m in ens.members_[:2])
    assert not torch.equal(w0, w1), "members get different seeds"
    report = ens.evaluate(digits.test)
    assert report["arithmetic"].accuracy > 0.85 and report["geometric"].accuracy > 0.85
    assert set(report.scores) == {"member_0", "member_1", "member_2", "arithmetic", "geometric", "generalist"}
    assert report["arithmetic"].errors == round((1 - report["arithmetic"].accuracy) * len(digits.test))
    assert 0 < report["member_0"].nll < 1, "the NLL of a trained member, in nats"


def test_predict_proba_is_the_mean_of_member_softmaxes(fitted, digits):
    ens, *_ = fitted
    x = digits.test.x[:16]
    logits = torch.stack([m(x) for m in ens.members_]).detach()
    for mean in ("arithmetic", "geometric"):
        probs = ens.predict_proba(x, temperature=4.0, mean=mean)
        assert torch.allclose(probs.sum(1), torch.ones(16), atol=1e-5)
        assert torch.allclose(probs, ensemble_probs(logits, 4.0, mean), atol=1e-5)
    assert ens.predict(x).shape == (16,)


def test_cached_logits_are_kept_by_sample_index(fitted, digits):
    ens, *_ = fitted
    cached = ens.cached_logits("train")["member_1"]
    idx = torch.tensor([5, 0, 99, 42])
    with torch.no_grad():
        assert torch.allclose(cached[idx], ens.members_[1](digits.train.x[idx]), atol=1e-5)
    soft = ens.soft_targets("val", temperature=2.0)
    assert soft.shape == (len(digits.val), 10)


def test_every_model_has_a_nested_mlflow_run_with_curves(fitted):
    ens, tracker, parent, _ = fitted
    client = MlflowClient(tracker.uri)
    runs = client.search_runs([tracker.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.info.run_name for r in runs) == ["generalist", "member_0", "member_1", "member_2"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["role"] in ("member", "generalist")
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3]
        assert len(client.get_metric_history(run.info.run_id, "epoch_seconds")) == 3
        assert 0 <= run.data.metrics["test_accuracy"] <= 1 and "test_errors" in run.data.metrics
    members = [r for r in runs if r.data.tags["role"] == "member"]
    assert sorted(r.data.tags["member_index"] for r in members) == ["0", "1", "2"]


def test_a_second_fit_reuses_finished_members(fitted, digits):
    ens, _, _, out = fitted
    again = Ensemble(ens.member_factories[0], n_members=3, generalist=ens.generalist_factory,
                     train=quick_train(3), seed=0, output_dir=out, show_progress=False)
    again.fit(digits.train, digits.val, digits.test)
    assert all(r.reused for r in again.results_)
    assert torch.equal(again.cached_logits("test")["member_0"], ens.cached_logits("test")["member_0"])


def test_a_model_with_the_wrong_width_fails_before_any_actor(digits, tmp_path):
    def wrong():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))

    with pytest.raises(ModelError, match="member_0"):
        Ensemble(wrong, n_members=2, output_dir=tmp_path, show_progress=False).fit(digits.train, digits.val)


def test_an_infeasible_gpu_request_fails_fast(digits, tmp_path):
    factory = small_mlp_factory(digits.input_shape, digits.num_classes)
    with pytest.raises(ResourceError, match="num_gpus=1"):
        Ensemble(factory, n_members=1, num_gpus=1, output_dir=tmp_path, show_progress=False).fit(
            digits.train, digits.val
        )
