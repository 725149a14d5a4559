"""``train.final_fit``: phase 1 chooses the epoch count on validation, phase 2 retrains on train + validation.

The one-cycle schedule steps once a batch, so each phase's checkpoint records how many batches its schedule spans:
worked out by hand from the split sizes, that count shows which examples each phase trained on."""

from __future__ import annotations

import json
import math

import torch

from helpers import quick_train, small_mlp_factory
from distill.api import Distiller
from distill.transfer import SubsetSampler
from ensemble.api import Ensemble
from ensemble.base.checkpoint import CheckpointDir
from specialists.dustbin import GroupSampler

BATCH = 64


def _train(epochs: int):
    return quick_train(epochs, final_fit=True, scheduler={"name": "onecycle"})


def _schedules(folder) -> dict[int, dict]:
    """Scheduler length (batches) -> result.json, for every model folder under ``folder``."""
    found = {}
    for result in folder.glob("*/result.json"):
        checkpoint = CheckpointDir(result.parent / "checkpoints").latest()
        found[checkpoint["scheduler"]["total_steps"]] = json.loads(result.read_text())
    return found


def test_samplers_extend_to_the_validation_rows_by_their_own_rule():
    labels = torch.tensor([0, 3, 1, 3, 3, 2])  # rows 0-3 train, rows 4-5 validation
    rule = {"fraction": 1.0, "omit_classes": [3], "only_classes": None, "seed": 0}
    assert SubsetSampler(torch.tensor([0, 2]), rule).for_final_fit(labels, n_train=4).indices.tolist() == [0, 2, 5]
    group = GroupSampler(labels[:4], [3]).for_final_fit(labels, n_train=4)
    assert group.inside.tolist() == [1, 3, 4] and group.outside.tolist() == [0, 2, 5]


def test_members_retrain_on_train_and_val_for_the_chosen_epochs_and_keep_train_rows(digits, tmp_path):
    factory = small_mlp_factory(digits.input_shape, digits.num_classes)
    ens = Ensemble(factory, n_members=1, train=_train(3), seed=2, output_dir=tmp_path, in_process=True)
    ens.fit(digits.train, digits.val, digits.test)

    n_train, n_val = len(digits.train), len(digits.val)
    schedules = _schedules(tmp_path)
    first = schedules.pop(3 * math.ceil(n_train / BATCH))  # phase 1: three epochs of the training split alone
    best = first["metrics"]["best_epoch"]
    (steps, final), = schedules.items()
    assert steps == best * math.ceil((n_train + n_val) / BATCH), "phase 2: best epochs of train + validation"
    assert len(final["history"]) == best
    # Row i of the teacher cache is still training example i, from the final model.
    train_logits = ens.cached_logits("train")["member_0"]
    assert train_logits.shape == (n_train, 10)
    with torch.no_grad():
        assert torch.allclose(ens.members_[0](digits.train.x[[5, 1]]), train_logits[[5, 1]], atol=1e-5)


def test_a_distilled_student_retrains_on_its_transfer_rows_of_train_and_val(digits, tmp_path):
    factory = small_mlp_factory(digits.input_shape, digits.num_classes)
    teacher = Ensemble(factory, n_members=1, train=quick_train(2), output_dir=tmp_path / "teacher", in_process=True)
    teacher.fit(digits.train, digits.val, digits.test)
    distiller = Distiller(teacher, factory, temperature=4, train=_train(2), omit_classes=[3], baseline=False,
                          output_dir=tmp_path / "student", in_process=True)
    distiller.fit(digits.train, digits.val, digits.test)

    kept_train = int((digits.train.y != 3).sum())
    kept_val = int((digits.val.y != 3).sum())
    schedules = _schedules(tmp_path / "student")
    first = schedules.pop(2 * math.ceil(kept_train / BATCH))
    assert set(schedules) == {first["metrics"]["best_epoch"] * math.ceil((kept_train + kept_val) / BATCH)}
    assert len(distiller.transfer_indices_) == kept_train  # the reported transfer set is the training split's
