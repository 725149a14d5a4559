"""Normalisation inside the model and batched augmentation on CIFAR-shaped tensors (no CIFAR download here)."""

import math

import pytest
import torch

from distill.config import load_config
from ensemble import Ensemble
from ensemble.data.split import Split
from ensemble.base.errors import ConfigError
from ensemble.models.registry import RegisteredModel
from ensemble.data.transforms import Normalize, channel_stats, hflip


def test_channel_stats_are_per_channel_over_examples_and_pixels():
    # Channel 0 holds 1, 2, 3 (mean 2, population std sqrt(2/3)); channel 1 holds 0, 0, 6 (mean 2, std sqrt(8)).
    x = torch.tensor([[[[1.0]], [[0.0]]], [[[2.0]], [[0.0]]], [[[3.0]], [[6.0]]]])
    mean, std = channel_stats(x, batch=2)  # two batches: the sums must carry over
    assert mean == pytest.approx([2.0, 2.0]) and std == pytest.approx([math.sqrt(2 / 3), math.sqrt(8)])


def test_normalize_subtracts_and_divides_per_channel():
    x = torch.tensor([[[[3.0, 5.0]], [[10.0, 0.0]]], [[[1.0, 1.0]], [[4.0, 4.0]]]])  # (2, 2, 1, 2)
    out = Normalize([1.0, 4.0], [2.0, 3.0])(x)
    expected = torch.tensor([[[[1.0, 2.0]], [[2.0, -4 / 3]]], [[[0.0, 0.0]], [[0.0, 0.0]]]])
    assert torch.allclose(out, expected)


def test_hflip_mirrors_a_random_half_and_leaves_the_rest():
    x = torch.arange(400 * 3 * 2 * 4, dtype=torch.float32).reshape(400, 3, 2, 4)
    out = hflip(x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped ^ kept).all(), "each image is either mirrored whole or untouched"
    assert 150 < int(flipped.sum()) < 250


def test_a_normalised_augmented_cifar_shaped_member_trains_and_carries_its_statistics(tmp_path):
    torch.manual_seed(0)
    x = torch.rand(96, 3, 32, 32) * torch.tensor([1.0, 0.5, 0.25])[None, :, None, None]
    splits = {"train": Split(x[:64], torch.arange(64) % 10), "val": Split(x[64:], torch.arange(32) % 10)}
    stats = channel_stats(splits["train"].x)
    factory = RegisteredModel("cnn", (3, 32, 32), 10, {"channels": [8], "hidden": 16}, normalize=stats)
    ens = Ensemble(factory, {"members": 1, "train": {"epochs": 1, "batch_size": 32}}, jitter=4, hflip=True,
                   in_process=True, show_progress=False, output_dir=tmp_path).fit(splits["train"], splits["val"])
    model = ens.members_[0]
    assert isinstance(model[0], Normalize)
    assert torch.allclose(model[0].mean.flatten(), torch.tensor(stats[0])), "the training split's statistics"
    with torch.no_grad():
        assert torch.allclose(model(x[:5]), model[1]((x[:5] - model[0].mean[..., None, None]) /
                                                      model[0].std[..., None, None]), atol=1e-6)
    plain = RegisteredModel("cnn", (3, 32, 32), 10, {"channels": [8], "hidden": 16})
    assert plain.identity() != factory.identity(), "normalisation is part of the model's identity"


def test_jitter_and_random_crop_together_are_refused():
    with pytest.raises(ConfigError, match="same random translation"):
        load_config(None, ["data.jitter=2", "data.augment.random_crop=4"])
