"""``train.grad_clip_value``: each gradient element clamped to [-v, v] before the step, alone and in a pack.

The example of a training option added after the loop became one: its config field, the step, and this test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ensemble.data.split import Split
from ensemble.schema.sections import TrainConfig
from ensemble.training.packing import pack_trainer
from ensemble.training.trainer import Trainer, TrainSpec


def _zero_linear():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    for p in model.parameters():
        nn.init.zeros_(p)
    return model


def _data():
    # Eight identical examples of class 0: at zero weights every logit is 0, softmax 1/3 each, so the batch-mean
    # cross-entropy's gradient is (1/3 - 1) = -2/3 for class 0's weights and bias, +1/3 for the other classes'.
    return {name: Split(torch.ones(8, 1, 2, 2), torch.zeros(8, dtype=torch.long)) for name in ("train", "val")}


def _train(clip):
    return TrainConfig(epochs=1, batch_size=8, optimizer={"lr": 0.3, "momentum": 0.0}, scheduler={"name": "none"},
                       select="last", grad_clip_value=clip)


@pytest.mark.parametrize("clip, class0, others", [
    (None, 0.3 * 2 / 3, -0.3 / 3),  # unclipped: one step of lr 0.3
    (0.5, 0.3 * 0.5, -0.3 / 3),  # class 0's -2/3 clamped to -0.5; the others' 1/3 is within the bound
    (0.25, 0.3 * 0.25, -0.3 * 0.25),  # both clamped
])
def test_each_gradient_element_is_clamped_before_the_step(clip, class0, others, tmp_path):
    spec = TrainSpec("m", "member", _zero_linear, _train(clip))
    result = Trainer(spec, _data(), tmp_path, spec.fingerprint("d")).fit()
    weight, bias = result.state_dict["1.weight"], result.state_dict["1.bias"]
    expected = torch.tensor([class0, others, others])
    torch.testing.assert_close(bias, expected)
    torch.testing.assert_close(weight, expected[:, None].expand(3, 4))


def test_a_pack_clamps_each_member_as_alone(tmp_path):
    specs = [TrainSpec(f"m{i}", "member", _zero_linear, _train(0.5), seed=i, pack="p") for i in range(2)]
    results = pack_trainer(specs, _data(), [tmp_path / s.name for s in specs], ["f0", "f1"]).fit_members()
    for result in results:
        torch.testing.assert_close(result.state_dict["1.bias"], torch.tensor([0.15, -0.1, -0.1]))


def test_the_option_names_a_model_only_when_set():
    assert "grad_clip_value" not in TrainConfig().identity(), "models trained before it keep their names"
    assert TrainConfig(grad_clip_value=0.5).identity()["grad_clip_value"] == 0.5
