"""The CIFAR-100 benchmark architectures and configs, on random CIFAR-shaped tensors (no download here)."""

import pytest
import torch

from distill import Distiller
from distill.config import load_config
from ensemble import Ensemble
from ensemble.data.split import Split
from ensemble.models.registry import RegisteredModel, build_model, count_parameters
from ensemble.data.transforms import channel_stats

# RepDistiller's parameter counts for 100 classes.
PARAMETERS = {"resnet8x4": 1_233_540, "resnet32x4": 7_433_860, "wrn_16_2": 703_284, "wrn_40_2": 2_255_156}


@pytest.mark.parametrize("name", sorted(PARAMETERS))
def test_architectures_have_the_published_sizes(name):
    model = build_model(name, (3, 32, 32), 100)
    assert count_parameters(model) == PARAMETERS[name]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("config", ["cifar100_resnet32x4_resnet8x4", "cifar100_wrn40_2_wrn16_2"])
def test_each_pair_trains_two_batches_from_its_config(config, tmp_path):
    cfg = load_config(f"configs/{config}.yaml", ["ensemble.train.epochs=1", "ensemble.train.batch_size=8",
                                                  "student.train.epochs=1", "student.train.batch_size=8"])
    assert cfg.data.normalize and cfg.data.augment.random_crop == 4 and cfg.data.augment.hflip
    assert cfg.ensemble.train.scheduler.milestones == [150, 180, 210]
    torch.manual_seed(0)
    train, val = (Split(torch.rand(n, 3, 32, 32), torch.randint(0, 100, (n,))) for n in (16, 8))
    stats = channel_stats(train.x)
    common = {"in_process": True, "show_progress": False, "num_gpus": 0}
    teacher = Ensemble(RegisteredModel.from_config(cfg.ensemble.model, (3, 32, 32), 100, stats), cfg.ensemble,
                       jitter=cfg.data.shift, hflip=cfg.data.augment.hflip, output_dir=tmp_path / "t",
                       **common).fit(train, val, num_classes=100)
    student = Distiller(teacher, RegisteredModel.from_config(cfg.student.model, (3, 32, 32), 100, stats),
                        cfg.student, output_dir=tmp_path / "s", **common).fit(train, val)
    for result in (*teacher.results_, *student.results_):
        assert result.history[0]["samples_per_second"] > 0 and len(result.history) == 1, result.name
    assert torch.isfinite(torch.tensor(student.results_[0].history[0]["train_loss"]))
