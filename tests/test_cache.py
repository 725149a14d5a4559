"""Teacher targets on disk: shards read by sample id, top-K rows, identity by hash, and a student trained on them."""

import pickle

import torch

from distill import Distiller
from distill.cache import ShardedTargets, write_targets
from ensemble import Ensemble
from ensemble.training.teacher import TeacherOutputs
from helpers import quick_train, small_mlp_factory


def _outputs(n: int = 20, classes: int = 6) -> TeacherOutputs:
    torch.manual_seed(0)
    logits = torch.randn(n, classes)
    return TeacherOutputs(torch.softmax(logits / 3, 1), torch.log_softmax(logits, 1))


def _batches(outputs: TeacherOutputs, size: int):
    return (outputs[torch.arange(i, min(i + size, len(outputs.probs)))] for i in range(0, len(outputs.probs), size))


def test_dense_shards_return_the_rows_asked_for_in_any_order(tmp_path):
    outputs = _outputs()
    targets = write_targets(tmp_path / "t", _batches(outputs, 6), 20, rows_per_shard=7)
    assert targets.meta["shards"] == 3 and len(targets) == 20
    rows = torch.tensor([19, 0, 7, 13, 6, 14])  # across all three shards, out of order
    got = targets[rows]
    assert torch.equal(got.probs, outputs.probs[rows]) and torch.equal(got.logits, outputs.logits[rows])
    assert not list(tmp_path.glob(".*partial")), "the folder appears whole or not at all"
    assert len(pickle.dumps(targets)) < 1000, "an actor gets the folder's name, not the arrays"


def test_top_k_shards_keep_the_largest_probabilities_and_the_rest(tmp_path):
    outputs = _outputs()
    targets = write_targets(tmp_path / "k", _batches(outputs, 5), 20, top=2, rows_per_shard=8)
    rows = torch.tensor([3, 17, 9])
    top = targets[rows].top
    probs = outputs.probs[rows]
    expected = probs.sort(dim=1, descending=True).values[:, :2]
    assert torch.allclose(top.log_probs.exp(), expected, atol=1e-6)
    assert torch.allclose(top.rest_log_mass.exp(), 1 - expected.sum(1), atol=1e-6)
    assert torch.allclose(probs.gather(1, top.indices), top.log_probs.exp(), atol=1e-6), "indices name the classes"
    dense = write_targets(tmp_path / "d", _batches(outputs, 5), 20, rows_per_shard=8)
    assert targets.nbytes() < dense.nbytes(), "2 of 6 classes: (2 + 2 + 1) numbers a row against 12"


def test_a_student_trains_from_top_k_targets_on_disk_named_by_what_defines_them(digits, tmp_path):
    factory = small_mlp_factory(digits.input_shape, digits.num_classes)
    teacher = Ensemble(factory, n_members=1, train=quick_train(3), output_dir=tmp_path / "teacher",
                       in_process=True, show_progress=False).fit(digits.train, digits.val)
    common = {"train": quick_train(4), "baseline": False, "output_dir": tmp_path / "student", "in_process": True,
              "show_progress": False}
    student = Distiller(teacher, factory, {"temperature": 4.0, "cache": {"top_k": 3, "store": "disk"}}, **common)
    student.fit(digits.train, digits.val)
    assert isinstance(student.objective_.cache, ShardedTargets) and student.objective_.cache.top_k == 3
    assert student.evaluate(digits.test)["student"].accuracy > 0.7
    folders = list((tmp_path / "student" / "teacher_targets").iterdir())
    Distiller(teacher, factory, {"temperature": 2.0, "cache": {"top_k": 3}}, **common).fit(digits.train, digits.val)
    assert len(list((tmp_path / "student" / "teacher_targets").iterdir())) == len(folders) + 1, \
        "another temperature is another cache"
    tail = Distiller(teacher, factory, {"temperature": 2.0, "cache": {"top_k": 3, "rest_samples": 4}}, **common)
    tail.fit(digits.train, digits.val)
    assert len(list((tmp_path / "student" / "teacher_targets").iterdir())) == len(folders) + 2, \
        "sampling the rest is another cache"
    assert tail.objective_.cache[torch.arange(5)].top.rest_samples.shape == (5, 4)


def test_shards_written_by_ray_tasks_equal_those_written_here(tmp_path, ray_cpu):
    from distill.cache import write_targets_on_ray
    from ensemble.data.split import Split
    from ensemble.training.teacher import ModuleOutputs

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 6))
    splits = [Split(torch.randn(13, 1, 2, 2), torch.zeros(13, dtype=torch.long)),
              Split(torch.randn(8, 1, 2, 2), torch.zeros(8, dtype=torch.long))]  # a shard spans both splits
    online = ModuleOutputs(net)
    # Written in batches of 13 and 8 here, in shards of 5 there: a row's sampled rest classes depend on its id only.
    here = write_targets(tmp_path / "here", (online(s.x, 3.0) for s in splits), 21, top=2, rows_per_shard=5,
                         rest_samples=3)
    remote = write_targets_on_ray(tmp_path / "ray", online, splits, 3.0, top=2, rows_per_shard=5, rest_samples=3)
    assert remote.meta == here.meta and remote.meta["shards"] == 5
    rows = torch.tensor([20, 0, 12, 13, 4])
    a, b = here[rows].top, remote[rows].top
    assert torch.equal(a.indices, b.indices) and torch.allclose(a.log_probs, b.log_probs, atol=1e-6)
    assert torch.allclose(a.rest_log_mass, b.rest_log_mass, atol=1e-6)
    assert a.rest_samples.shape == (5, 3) and torch.equal(a.rest_samples, b.rest_samples)
    assert torch.allclose(a.rest_entropy, b.rest_entropy, atol=1e-6)
    assert not (a.rest_samples[:, :, None] == a.indices[:, None, :]).any(), "draws come from outside the top K"
