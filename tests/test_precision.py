"""train.precision, channels_last and compile: what each changes, and fp16's refusal on a CPU."""

import pytest
import torch

from ensemble import Ensemble
from ensemble.base.errors import ConfigError
from ensemble.training.objectives import CrossEntropy
from ensemble.training.trainer import Trainer, TrainSpec
from helpers import quick_train, small_mlp_factory


class DtypeSpy(CrossEntropy):
    """Cross-entropy that records the dtype of the logits the step computed."""

    seen: list = []

    def __call__(self, model, x, y, idx):
        logits, terms = super().__call__(model, x, y, idx)
        DtypeSpy.seen.append(logits.dtype)
        return logits, terms


def _fit(digits, tmp_path, **train):
    spec = TrainSpec("m", "member", small_mlp_factory(digits.input_shape, digits.num_classes), quick_train(4, **train),
                     seed=0, objective=DtypeSpy())
    return Trainer(spec, {"train": digits.train, "val": digits.val, "test": digits.test}, tmp_path, "fp").fit()


def test_bf16_autocasts_the_step_and_trains_as_well_as_fp32(digits, tmp_path):
    DtypeSpy.seen.clear()
    fp32 = _fit(digits, tmp_path / "fp32")
    assert set(DtypeSpy.seen) == {torch.float32}
    DtypeSpy.seen.clear()
    bf16 = _fit(digits, tmp_path / "bf16", precision="bf16")
    assert set(DtypeSpy.seen) == {torch.bfloat16}, "the forward pass ran in bf16"
    assert all(v.dtype == torch.float32 for v in bf16.state_dict.values()), "weights stay fp32"
    assert abs(bf16.metrics["test_accuracy"] - fp32.metrics["test_accuracy"]) < 0.03


def test_channels_last_and_compile_train_and_checkpoint_the_plain_model(digits, tmp_path):
    from ensemble.models.registry import RegisteredModel

    factory = RegisteredModel("cnn", digits.input_shape, digits.num_classes, {"channels": [8], "hidden": 16})
    spec = TrainSpec("c", "member", factory, quick_train(1, channels_last=True, compile=True), seed=0)
    # Where torch.compile cannot run (no compiler), the trainer warns once and trains eagerly: either way it trains.
    result = Trainer(spec, {"train": digits.train, "val": digits.val}, tmp_path, "cl").fit()
    assert not any(key.startswith("_orig_mod") for key in result.state_dict), "the plain model's keys"
    assert result.metrics["val_accuracy"] > 0.1


def test_fp16_on_a_cpu_is_refused_before_anything_starts(digits, tmp_path):
    ens = Ensemble(small_mlp_factory(digits.input_shape, digits.num_classes),
                   {"members": 1, "train": {"epochs": 1, "precision": "fp16"}}, output_dir=tmp_path)
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a CUDA GPU"):
        ens.fit(digits.train, digits.val)
    assert not list(tmp_path.iterdir()), "nothing was written"


def test_a_model_that_cannot_compile_trains_eagerly_with_one_warning(digits, tmp_path, monkeypatch):
    def broken(model, *args, **kwargs):
        def fail(*a, **k):
            raise RuntimeError("no compiler for this platform")
        return fail

    monkeypatch.setattr(torch, "compile", broken)
    spec = TrainSpec("e", "member", small_mlp_factory(digits.input_shape, digits.num_classes),
                     quick_train(2, compile=True), seed=0)
    with pytest.warns(UserWarning, match="train.compile is not supported here .*no compiler") as caught:
        result = Trainer(spec, {"train": digits.train, "val": digits.val}, tmp_path, "eager").fit()
    assert len([w for w in caught if "train.compile" in str(w.message)]) == 1
    assert result.metrics["val_accuracy"] > 0.3
