"""The distillation stage's parts: teacher targets by sample index, transfer sets, the bias shift."""

import pytest
import torch
from torch import nn

from distill.losses import LOSSES, TeacherOutputs, register_loss
from distill.objective import DistillationObjective
from distill.teachers import OnlineTeacher, TeacherCache, teacher_outputs
from distill.transfer import SubsetSampler, choose_bias_shift, left_out_classes, shifted, transfer_indices
from ensemble.errors import ConfigError, DataError
from ensemble.soft_targets import ensemble_probs


@pytest.fixture
def spy_loss():
    seen = []

    @register_loss("spy_for_test")
    def spy(student_logits, labels, teacher, temperature, alpha):
        seen.append(teacher)
        return {"spy": student_logits.sum() * 0}

    yield seen
    LOSSES.pop("spy_for_test")


def test_cached_targets_are_looked_up_by_sample_index_under_shuffling(spy_loss):
    n, classes = 50, 5
    probs = torch.softmax(torch.randn(n, classes), 1)
    logits = torch.randn(n, classes)
    objective = DistillationObjective("spy_for_test", 2.0, 0.5, cache=TeacherOutputs(probs, logits))
    idx = torch.randperm(n)[:16]
    model = nn.Flatten()
    objective(model, torch.randn(16, classes), torch.zeros(16, dtype=torch.long), idx)
    assert torch.equal(spy_loss[0].probs, probs[idx]) and torch.equal(spy_loss[0].logits, logits[idx])


def test_online_and_cached_teachers_give_the_same_targets():
    torch.manual_seed(0)
    members = [nn.Sequential(nn.Flatten(), nn.Linear(4, 3)) for _ in range(3)]
    x = torch.randn(10, 1, 2, 2)
    online = OnlineTeacher("ensemble", members=members, mean="geometric")(x, 3.0)
    with torch.no_grad():
        member_logits = torch.stack([m(x) for m in members])
    cached = teacher_outputs("ensemble", {"members": member_logits}, 3.0, "geometric")
    assert torch.allclose(online.probs, cached.probs) and torch.allclose(online.logits, cached.logits)
    assert torch.allclose(cached.probs, ensemble_probs(member_logits, 3.0, "geometric"))


def test_specialist_teacher_without_active_specialists_is_the_tempered_generalist():
    generalist = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    out = teacher_outputs("specialists", {"generalist": generalist, "specialists": [torch.zeros(1, 3)]}, 2.0,
                          groups=[[1, 2]])
    assert torch.allclose(out.probs, torch.softmax(generalist / 2.0, 1))


def test_a_cache_for_other_data_is_refused(tmp_path):
    cache = TeacherCache(TeacherOutputs(torch.ones(2, 2) / 2, torch.zeros(2, 2)), "abc")
    cache.save(tmp_path / "cache.pt")
    loaded = TeacherCache.load(tmp_path / "cache.pt")
    loaded.check("abc")
    with pytest.raises(DataError, match="made for another dataset or split"):
        loaded.check("xyz")


def test_transfer_sets():
    labels = torch.tensor([0, 1, 2, 3] * 25)
    assert len(transfer_indices(labels)) == 100
    no3 = transfer_indices(labels, omit_classes=[3])
    assert len(no3) == 75 and not (labels[no3] == 3).any()
    only = transfer_indices(labels, only_classes=[1, 2])
    assert set(labels[only].tolist()) == {1, 2}
    few = transfer_indices(labels, fraction=0.03, seed=0)
    assert len(few) == 3 and torch.equal(few, transfer_indices(labels, fraction=0.03, seed=0))
    assert left_out_classes(4, [3]) == [3] and left_out_classes(4, only_classes=[1, 2]) == [0, 3]
    with pytest.raises(ConfigError, match="transfer set is empty"):
        transfer_indices(labels, only_classes=[7])
    order = SubsetSampler(no3).epoch_order(100, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == no3.tolist()


def test_bias_shift_is_chosen_on_validation_data():
    # Class 2 is never predicted: its logit sits 2 below the winner on its own examples. Other examples
    # have a margin of 3 over class 2. Any shift in (2, 3) fixes the first without breaking the second;
    # the smallest on the grid wins.
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    labels = torch.tensor([2, 2, 0, 1])
    shift, table = choose_bias_shift(logits, labels, [2], torch.arange(0.0, 5.0, 0.5))
    assert shift == 2.5
    assert {row["shift"]: row["val_accuracy"] for row in table}[0.0] == 0.5
    assert shifted(logits, [2], shift)[:, 2].tolist() == [2.5, 2.5, 2.5, 2.5]


def test_objective_rejects_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        DistillationObjective("kd", 0.0, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        DistillationObjective("kd", 2.0, 1.5)
    with pytest.raises(ConfigError, match="unknown loss"):
        DistillationObjective("nope", 2.0, 0.5)
