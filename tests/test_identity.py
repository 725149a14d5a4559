"""Identity is complete: whatever is reused from disk is named by a hash of everything that defines it."""

from functools import partial

import pytest
import torch
from torch import nn

from ensemble.data.split import Split
from ensemble.models.registry import MaxNormLinear, build_model
from ensemble.training.trainer import TrainSpec
from specialists.dustbin import GroupSampler

from helpers import quick_train

SHAPE = (1, 4, 4)


def _fp(factory, seed=0, sampler=None) -> str:
    return TrainSpec("m", "member", factory, quick_train(1), seed=seed, sampler=sampler).fingerprint("data")


def _partial_mlp(max_norm):
    return partial(build_model, "mlp", SHAPE, 3, {"hidden": [8], "max_norm": max_norm})


def _registered_mlp(max_norm):
    from ensemble.models.registry import RegisteredModel

    return RegisteredModel("mlp", SHAPE, 3, {"hidden": [8], "max_norm": max_norm})


@pytest.mark.parametrize("make", [_partial_mlp, _registered_mlp], ids=["partial", "registered"])
def test_max_norm_changes_the_fingerprint(make, monkeypatch):
    assert _fp(make(1.0)) == _fp(make(1.0))
    assert _fp(make(1.0)) != _fp(make(2.0))
    if make is _registered_mlp:
        # A registered model is named by its name and params, not by what its repr happens to show.
        monkeypatch.setattr(MaxNormLinear, "extra_repr", nn.Linear.extra_repr)
        assert _fp(make(1.0)) != _fp(make(2.0))


class ScaledLinear:
    """A user's factory: the init scale changes the model but not its repr."""

    def __init__(self, scale: float, version=None):
        self.scale, self.version = scale, version

    def __call__(self) -> nn.Module:
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        with torch.no_grad():
            model[1].weight.mul_(self.scale)
        return model


def test_user_factory_is_named_by_its_initial_weights_and_version():
    assert _fp(ScaledLinear(1.0)) == _fp(ScaledLinear(1.0))
    assert _fp(ScaledLinear(1.0)) != _fp(ScaledLinear(0.5))
    assert _fp(ScaledLinear(1.0), seed=0) != _fp(ScaledLinear(1.0), seed=1)
    assert _fp(ScaledLinear(1.0, version=1)) != _fp(ScaledLinear(1.0, version=2))


def test_fingerprint_builds_the_model_as_training_does_and_leaves_the_rng_alone():
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    first = _fp(ScaledLinear(1.0), seed=7)
    assert torch.equal(torch.get_rng_state(), rng), "computing a fingerprint must leave the global RNG alone"
    torch.manual_seed(456)  # another global RNG state: the same spec, the same fingerprint
    assert _fp(ScaledLinear(1.0), seed=7) == first


def test_a_config_model_refits_when_max_norm_or_version_changes(digits, tmp_path):
    from ensemble.api import Ensemble
    from ensemble.schema.sections import ModelConfig
    from ensemble.models.registry import RegisteredModel

    def fit(**model):
        config = ModelConfig(name="mlp", params={"hidden": [8], "max_norm": model.pop("max_norm", 1.0)}, **model)
        factory = RegisteredModel.from_config(config, digits.input_shape, digits.num_classes)
        ens = Ensemble(factory, n_members=1, train=quick_train(1), output_dir=tmp_path, in_process=True,
                       show_progress=False)
        return ens.fit(digits.train, digits.val).results_[0]

    assert not fit().reused
    assert fit().reused
    assert not fit(max_norm=2.0).reused
    assert not fit(version=2).reused
    assert len(list(tmp_path.glob("member_0-*"))) == 3


def test_subset_sampler_is_named_by_all_its_indices():
    from distill.transfer import SubsetSampler

    factory = _partial_mlp(None)
    a = SubsetSampler(torch.tensor([0, 1, 2, 5, 6]))
    b = SubsetSampler(torch.tensor([0, 1, 2, 7, 8]))
    assert _fp(factory, sampler=a) == _fp(factory, sampler=SubsetSampler(torch.tensor([0, 1, 2, 5, 6])))
    assert _fp(factory, sampler=a) != _fp(factory, sampler=b)


def test_group_sampler_is_named_by_its_members_not_their_counts():
    factory = _partial_mlp(None)
    a = GroupSampler(torch.tensor([0, 1, 0, 1, 2]), [0])
    b = GroupSampler(torch.tensor([1, 0, 0, 1, 2]), [0])
    assert _fp(factory, sampler=a) != _fp(factory, sampler=b)


def _teacher(weight: float) -> nn.Module:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with torch.no_grad():
        teacher[1].weight.zero_()
        teacher[1].weight[0].fill_(weight)  # class 0 gains or loses with the input; the other classes stay put
    return teacher


def test_a_teacher_cache_is_named_by_all_its_rows(tmp_path):
    from distill.api import Distiller

    # The first 50 inputs are zeros: both teachers output their (equal) biases there, and differ only later.
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.zeros(50, *SHAPE), torch.rand(30, *SHAPE, generator=gen)])
    train, val = Split(x, torch.arange(80) % 3), Split(torch.rand(12, *SHAPE, generator=gen), torch.arange(12) % 3)
    results = []
    for weight in (0.1, -0.1):
        distiller = Distiller(_teacher(weight), _partial_mlp(None), train=quick_train(1), output_dir=tmp_path,
                              in_process=True, show_progress=False)
        results.append(distiller.fit(train, val).results_[0])
    assert not results[1].reused, "a student distilled from another teacher was reused"
