"""The model registry, the output-width check and the max-norm constraint."""

import pytest
import torch
from torch import nn

from ensemble.schema.sections import ModelConfig
from ensemble.base.errors import ConfigError, ModelError
from ensemble.models.registry import MODELS, build_model, check_output_width, count_parameters, register_model


@pytest.mark.parametrize("name, shape", [("mlp", (1, 28, 28)), ("cnn", (1, 28, 28)), ("resnet18", (3, 32, 32))])
def test_registered_models_map_images_to_class_logits(name, shape):
    model = build_model(name, shape, 10)
    check_output_width(model, shape, 10, name)
    assert model(torch.zeros(3, *shape)).shape == (3, 10)


def test_paper_mlp_sizes():
    # 784*1200 + 1200 + 1200*1200 + 1200 + 1200*10 + 10: the paper's 2x1200 teacher.
    assert count_parameters(build_model("mlp", (1, 28, 28), 10, {"hidden": [1200, 1200]})) == 2_395_210


def test_wrong_output_width_is_a_model_error():
    with pytest.raises(ModelError, match=r"outputs shape \(7,\) per example, expected \(10,\)"):
        check_output_width(nn.Sequential(nn.Flatten(), nn.Linear(64, 7)), (1, 8, 8), 10, "member_0")
    with pytest.raises(ModelError, match="fails on inputs"):
        check_output_width(nn.Linear(3, 10), (1, 8, 8), 10, "member_0")


def test_max_norm_constraint_caps_each_unit():
    model = build_model("mlp", (1, 4, 4), 3, {"hidden": [8], "max_norm": 0.5})
    layer = model[1]
    with torch.no_grad():
        layer.weight.mul_(100)
    layer.constrain()
    assert torch.all(layer.weight.norm(dim=1) <= 0.5 + 1e-6)


def test_users_register_their_own_models():
    @register_model("tiny_linear_for_test")
    def tiny(input_shape, num_classes, scale: float = 1.0):
        return nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), num_classes))

    try:
        assert ModelConfig(name="tiny_linear_for_test", params={"scale": 2.0}).name == "tiny_linear_for_test"
        assert build_model("tiny_linear_for_test", (1, 2, 2), 4)(torch.zeros(1, 1, 2, 2)).shape == (1, 4)
        with pytest.raises(ValueError, match="no parameter 'width'"):
            ModelConfig(name="tiny_linear_for_test", params={"width": 2})
    finally:
        MODELS.pop("tiny_linear_for_test")


def test_bad_params_reach_the_user_as_config_errors():
    with pytest.raises(ConfigError, match="dropout"):
        build_model("mlp", (1, 4, 4), 3, {"dropout": 1.5})
