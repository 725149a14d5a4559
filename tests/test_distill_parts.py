"""The distillation stage's parts: teacher targets by sample index, transfer sets, the bias shift."""

import pytest
import torch
from torch import nn

from distill.losses import LOSSES, TeacherOutputs, register_loss
from distill.objective import DistillationObjective
from distill.transfer import SubsetSampler, choose_bias_shift, left_out_classes, shifted, transfer_indices
from ensemble.base.errors import ConfigError
from ensemble.api import Ensemble
from ensemble.data.split import Split
from ensemble.training.teacher import as_teacher
from ensemble.training.trainer import TrainResult
from specialists.teacher import specialist_outputs


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


def _constant_net(probs: list[list[float]]) -> nn.Module:
    """A net whose logits are ``log probs`` for every row of a (N, 1) input: row r of the input is r."""
    table = torch.log(torch.tensor(probs))
    return nn.Sequential(nn.Flatten(), _Lookup(table))


class _Lookup(nn.Module):
    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x):
        return self.table[x[:, 0].long()]


# Two members over 3 classes, two examples (the second mirrors the first); means worked out by hand.
MEMBER_PROBS = [[[0.5, 0.25, 0.25], [0.25, 0.25, 0.5]], [[0.25, 0.25, 0.5], [0.5, 0.25, 0.25]]]
ARITHMETIC_T1 = [[0.375, 0.25, 0.375]] * 2
GEOMETRIC_T1 = [[0.3694, 0.2612, 0.3694]] * 2  # sqrt(p1 p2) = [.35355, .25, .35355], over their sum .95711
ARITHMETIC_T2 = [[0.35355, 0.29289, 0.35355]] * 2  # each member: sqrt(p) / sum sqrt(p), then the mean


def _fitted_ensemble(mean: str) -> tuple[Ensemble, Split]:
    members = [_constant_net(p) for p in MEMBER_PROBS]
    train = Split(torch.tensor([[0.0], [1.0]]), torch.tensor([0, 2]))
    ens = Ensemble(members[0], {"members": 2, "mean": mean})
    ens.members_ = members
    ens.results_ = [TrainResult(f"member_{i}", "member", {}, {"train": m(train.x)}, [], {})
                    for i, m in enumerate(members)]
    ens.split_fingerprints_ = {"train": train.fingerprint()}
    return ens, train


@pytest.mark.parametrize("mean, temperature, expected", [("arithmetic", 1.0, ARITHMETIC_T1),
                                                          ("geometric", 1.0, GEOMETRIC_T1),
                                                          ("arithmetic", 2.0, ARITHMETIC_T2)])
def test_the_ensemble_teaches_its_mean_online_and_from_its_cache(mean, temperature, expected):
    ens, train = _fitted_ensemble(mean)
    expected = torch.tensor(expected)
    online = ens.online()(train.x, temperature)
    cached = ens.cached_outputs([train], temperature)
    for outputs in (online, cached):
        assert torch.allclose(outputs.probs, expected, atol=1e-4)
    at_t1 = torch.tensor(GEOMETRIC_T1 if mean == "geometric" else ARITHMETIC_T1)
    assert torch.allclose(cached.logits, at_t1.log(), atol=1e-4)
    other = Split(torch.tensor([[1.0], [0.0]]), torch.tensor([2, 0]))
    assert ens.cached_outputs([other], temperature) is None, "another split has no cached rows"


def test_the_specialist_teacher_solves_eq5_with_an_active_specialist():
    # Row 0: the generalist's top class (0) is in the group {0, 1}, so the specialist is active. With one class
    # outside the group, Eq. 5's optimum is the mean of p_g and the specialist's distribution with its dustbin on
    # class 2: ([.5, .3, .2] + [.2, .6, .2]) / 2. Row 1: the top class (2) is outside, so q is the generalist's.
    generalist = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]))
    specialist = torch.log(torch.tensor([[0.2, 0.6, 0.2], [0.3, 0.3, 0.4]]))
    out = specialist_outputs(generalist, [specialist], [[0, 1]], temperature=1.0)
    expected = torch.tensor([[0.35, 0.45, 0.2], [0.1, 0.2, 0.7]])
    assert torch.allclose(out.probs, expected, atol=1e-5)
    assert torch.allclose(out.logits, expected.log(), atol=1e-5)
    at_t2 = specialist_outputs(generalist, [specialist], [[0, 1]], temperature=2.0).probs[1]
    root = torch.tensor([0.1, 0.2, 0.7]).sqrt()
    assert torch.allclose(at_t2, root / root.sum(), atol=1e-5), "an inactive row is the tempered generalist"


def test_a_plain_module_teaches_its_softmax():
    net = _constant_net([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    teacher = as_teacher(net)
    out = teacher.online()(torch.tensor([[0.0], [1.0]]), 2.0)
    root = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]]).sqrt()
    assert torch.allclose(out.probs, root / root.sum(1, keepdim=True), atol=1e-6)
    assert teacher.cached_outputs([], 2.0) is None and teacher.hint_module() is net
    with pytest.raises(TypeError, match="Teacher protocol"):
        as_teacher("not a teacher")


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
