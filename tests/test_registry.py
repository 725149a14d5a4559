"""Datasets register by name like models: a registered loader is what ``data.name`` resolves, and an unknown name
is one line naming the field and the nearest registered names."""

from __future__ import annotations

import pytest
import torch

from ensemble import DATASETS, MODELS, register_dataset
from ensemble.base.errors import DataError
from ensemble.data.imagefolder import imagefolder_splits
from ensemble.data.registry import load_dataset
from ensemble.data.split import Split
from ensemble.schema.loading import validate_config
from ensemble.config import StageConfig
from ensemble.base.errors import ConfigError


@pytest.fixture
def tiny_dataset():
    calls = []

    def tiny(root: str, download: bool):
        calls.append((root, download))
        x = torch.arange(20 * 3, dtype=torch.float32).reshape(20, 3) / 60
        y = torch.arange(20) % 2
        return Split(x, y), Split(x[:4], y[:4]), ["even", "odd"]

    register_dataset("tiny_for_test")(tiny)
    yield calls
    del DATASETS["tiny_for_test"]


def test_a_registered_dataset_is_what_data_name_loads(tiny_dataset):
    splits = load_dataset("tiny_for_test", root="somewhere", download=True, val_size=0.25, seed=0)
    assert tiny_dataset == [("somewhere", True)]
    # 20 training rows: a quarter (5) carved off as validation, disjoint from the 15 kept for training.
    assert (len(splits.train), len(splits.val), len(splits.test)) == (15, 5, 4)
    rows = torch.cat([splits.train.x, splits.val.x])
    assert sorted((rows[:, 0] * 60 / 3).round().long().tolist()) == list(range(20))
    assert splits.class_names == ["even", "odd"] and splits.num_classes == 2
    config = validate_config(StageConfig, {"data": {"name": "tiny_for_test"}})
    assert config.data.name == "tiny_for_test"


@pytest.mark.parametrize("typo, nearest", [("minst", "mnist"), ("digts", "digits"), ("cifar1000", "cifar100"),
                                           ("imagefolders", "imagefolder")])
def test_an_unknown_dataset_is_one_line_with_the_nearest_names(typo, nearest):
    with pytest.raises(DataError) as caught:
        load_dataset(typo)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("data.name: unknown dataset")
    assert repr(nearest) in message.split(";")[0]
    with pytest.raises(ConfigError) as caught:
        validate_config(StageConfig, {"data": {"name": typo}})
    assert "data.name" in str(caught.value) and repr(nearest) in str(caught.value)


def test_imagefolder_and_the_zoo_are_in_their_registries():
    assert DATASETS["imagefolder"] is imagefolder_splits
    assert {"digits", "mnist", "cifar10", "cifar100", "npz"} <= set(DATASETS)
    assert {"mlp", "resnet8x4"} <= set(MODELS)
