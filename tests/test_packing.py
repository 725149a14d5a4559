"""``ensemble.pack``: members trained as one vectorised model match the same members trained alone on the same
batches, resume from their own checkpoints, and look like any other member from outside."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ensemble import Ensemble
from ensemble.schema.sections import TrainConfig
from ensemble.base.errors import ConfigError, TrainingDiverged
from ensemble.models.registry import RegisteredModel
from ensemble.training.packing import pack_trainer
from ensemble.training.trainer import Trainer, TrainSpec

from helpers import runs_of

SEEDS = (3, 4, 5)


class _PackOrder:
    """The batch order a pack seeded with SEEDS[0] draws in its first epoch, for a member trained alone."""

    def epoch_order(self, n, generator):
        return torch.randperm(n, generator=torch.Generator().manual_seed(SEEDS[0]))

    def identity(self):
        return {"pack_order": SEEDS[0]}


def _model(digits, **params):
    # Max-norm on the hidden layer: the constraint is applied to the stacked weights too.
    return RegisteredModel("mlp", digits.input_shape, digits.num_classes, {"hidden": [24], "max_norm": 1.5, **params})


def _train(epochs=1, **overrides) -> TrainConfig:
    return TrainConfig.model_validate({"epochs": epochs, "batch_size": 32, "select": "last",
                                       "optimizer": {"name": "sgd", "lr": 0.2, "momentum": 0.9,
                                                     "weight_decay": 1e-3}, **overrides})


def _splits(digits):
    return {"train": digits.train, "val": digits.val, "test": digits.test}


def _packed(digits, tmp_path, epochs=1, folder="packed", **train):
    specs = [TrainSpec(f"member_{i}", "member", _model(digits), _train(epochs, **train), seed, pack="p")
             for i, seed in enumerate(SEEDS)]
    dirs = [tmp_path / folder / spec.name for spec in specs]
    return pack_trainer(specs, _splits(digits), dirs, [f"fp{i}" for i in range(len(specs))])


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_packed_members_match_members_trained_alone_on_the_same_batches(digits, tmp_path, label_smoothing):
    packed = _packed(digits, tmp_path, label_smoothing=label_smoothing).fit_members()
    for i, seed in enumerate(SEEDS):
        spec = TrainSpec(f"alone_{i}", "member", _model(digits), _train(label_smoothing=label_smoothing), seed,
                         sampler=_PackOrder())
        alone = Trainer(spec, _splits(digits), tmp_path / f"alone_{i}", f"a{i}").fit()
        for key, value in alone.state_dict.items():
            torch.testing.assert_close(packed[i].state_dict[key], value, atol=2e-5, rtol=1e-4)
        assert packed[i].history[0]["train_loss"] == pytest.approx(alone.history[0]["train_loss"], rel=1e-4)
        assert packed[i].metrics["test_errors"] == alone.metrics["test_errors"]
    first, second = (packed[i].state_dict["1.weight"] for i in (0, 1))
    assert not torch.allclose(first, second), "each member keeps its own initial weights"
    assert float(first.norm(dim=1).max()) <= 1.5 + 1e-5, "max-norm holds for every unit of a packed member"


def test_a_packed_run_resumes_from_its_members_checkpoints(digits, tmp_path):
    whole = _packed(digits, tmp_path, epochs=2, folder="whole").fit_members()

    class Stop(Exception):
        pass

    def stop_after_first_epoch(member, record):
        if record["epoch"] == 1 and member == len(SEEDS) - 1:
            raise Stop

    with pytest.raises(Stop):
        _packed(digits, tmp_path, epochs=2, folder="cut").fit_members(stop_after_first_epoch)
    assert all((tmp_path / "cut" / f"member_{i}" / "checkpoints" / "epoch_0001.pt").is_file() for i in range(3))
    resumed = _packed(digits, tmp_path, epochs=2, folder="cut").fit_members()
    for a, b in zip(whole, resumed):
        assert b.resumed_from_epoch == 1 and [r["epoch"] for r in b.history] == [1, 2]
        for key in a.state_dict:  # momentum buffers came back from each member's own checkpoint
            torch.testing.assert_close(b.state_dict[key], a.state_dict[key], atol=1e-6, rtol=1e-5)


def test_an_ensemble_with_packs_looks_like_any_other(digits, tmp_path, ray_cpu, tracking_uri):
    config = {"members": 3, "pack": 2, "train": {"epochs": 2, "batch_size": 64}}
    ens = Ensemble(_model(digits), config, output_dir=tmp_path / "ens", show_progress=False,
                   tracking_uri=tracking_uri, experiment="packs")
    ens.fit(digits.train, digits.val, digits.test)
    assert [r.name for r in ens.results_] == ["member_0", "member_1", "member_2"]
    for name in ("member_0", "member_1", "member_2"):
        (folder,) = (tmp_path / "ens").glob(f"{name}-*")
        assert {"result.json", "model.pt", "logits.pt"} <= {p.name for p in folder.iterdir()}
    report = ens.evaluate(digits.test)
    assert all(report[f"member_{i}"].accuracy > 0.5 for i in range(3))
    pids = {r.placement["pid"] for r in ens.results_}
    assert len(pids) == 2, "members 0 and 1 trained in one actor, member 2 in another"
    client, runs = runs_of(tracking_uri, "packs")
    members = [r for r in runs if r.data.tags.get("role") == "member"]
    assert len(members) == 3
    for run in members:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2]

    again = Ensemble(_model(digits), config, output_dir=tmp_path / "ens", show_progress=False)
    again.fit(digits.train, digits.val, digits.test)
    assert all(r.reused for r in again.results_)
    alone = Ensemble(_model(digits), {**config, "pack": 1}, output_dir=tmp_path / "ens", show_progress=False)
    specs = alone._specs()
    assert [s.fingerprint("d") for s in specs] != [s.fingerprint("d") for s in again._specs()], \
        "a packed member is not the member trained alone: different names on disk"


def test_bad_packs_are_one_line_errors(digits, tmp_path):
    narrow, wide = _model(digits), _model(digits, hidden=[48])
    ens = Ensemble([narrow, wide], {"pack": 2, "train": {"epochs": 1}}, output_dir=tmp_path, in_process=True,
                   show_progress=False)
    with pytest.raises(ConfigError, match="^ensemble.pack: member_1 and member_0 have different architectures"):
        ens.fit(digits.train, digits.val)

    def with_batch_norm():
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.Linear(16, 10))

    ens = Ensemble(with_batch_norm, {"members": 2, "pack": 2, "train": {"epochs": 1}}, output_dir=tmp_path,
                   in_process=True, show_progress=False)
    with pytest.raises(ConfigError, match=r"^ensemble.pack: layer '2' keeps running statistics"):
        ens.fit(digits.train, digits.val)


def _blown_up(factory):
    """The same architecture with weights so large that its first loss overflows: training it diverges."""

    def build():
        model = factory()
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(1e30)
        return model

    return build


def test_a_diverging_packed_member_stops_with_the_error_it_gives_alone(digits, tmp_path):
    factories = [_model(digits), _blown_up(_model(digits)), _model(digits)]
    specs = [TrainSpec(f"member_{i}", "member", factory, _train(2), seed, pack="p")
             for i, (factory, seed) in enumerate(zip(factories, SEEDS))]
    with pytest.raises(TrainingDiverged) as alone:
        Trainer(specs[1], _splits(digits), tmp_path / "alone", "a1").fit()
    with pytest.raises(TrainingDiverged) as packed:
        pack_trainer(specs, _splits(digits), [tmp_path / s.name for s in specs], ["f0", "f1", "f2"]).fit_members()
    assert str(packed.value) == str(alone.value)
    assert str(packed.value).startswith("member_1: training loss became nan in epoch 1; lower the learning rate")
    assert "\n" not in str(packed.value)


def test_packed_members_clip_each_its_own_gradient_as_alone(digits, tmp_path):
    # A bound every step exceeds for some members and not for all: clipping the stack as one would differ.
    packed = _packed(digits, tmp_path, grad_clip_norm=1.0).fit_members()
    clipped = []
    for i, seed in enumerate(SEEDS):
        spec = TrainSpec(f"alone_{i}", "member", _model(digits), _train(grad_clip_norm=1.0), seed,
                         sampler=_PackOrder())
        alone = Trainer(spec, _splits(digits), tmp_path / f"alone_{i}", f"a{i}").fit()
        for key, value in alone.state_dict.items():
            torch.testing.assert_close(packed[i].state_dict[key], value, atol=2e-5, rtol=1e-4)
        assert packed[i].history[0]["grad_clipped"] == alone.history[0]["grad_clipped"]
        clipped.append(alone.history[0]["grad_clipped"])
    assert 0 < max(clipped), "the case needs steps that clip"


@pytest.mark.parametrize("option", ["channels_last", "compile"])
def test_options_a_pack_cannot_honour_are_refused_in_one_line(digits, tmp_path, option):
    expected = rf"^ensemble.pack: train.{option} [^\n]*; set it off or set ensemble.pack: 1$"
    with pytest.raises(ConfigError, match=expected):
        _packed(digits, tmp_path, **{option: True}).fit_members()
    ens = Ensemble(_model(digits), {"members": 2, "pack": 2, "train": {"epochs": 1, option: True}},
                   output_dir=tmp_path / "ens", in_process=True, show_progress=False)
    with pytest.raises(ConfigError, match=expected):
        ens.fit(digits.train, digits.val)
