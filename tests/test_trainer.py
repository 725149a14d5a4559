"""The one training loop, in-process: learning, checkpoints, resume, reuse, corruption and divergence."""

import json

import pytest
import torch

from ensemble.base.checkpoint import CheckpointDir
from ensemble.base.errors import CheckpointError, TrainingDiverged
from ensemble.training.trainer import Trainer, TrainSpec

from helpers import quick_train, small_mlp_factory


class Interrupt(Exception):
    pass


def _splits(digits):
    return {"train": digits.train, "val": digits.val, "test": digits.test}


def _spec(digits, epochs=4, **train_overrides):
    factory = small_mlp_factory(digits.input_shape, digits.num_classes)
    return TrainSpec("member_0", "member", factory, quick_train(epochs, **train_overrides), seed=3)


def _trainer(spec, digits, workdir):
    return Trainer(spec, _splits(digits), workdir, spec.fingerprint("digits"))


def test_trains_logs_every_term_and_keeps_logits_by_index(digits, tmp_path):
    spec = _spec(digits, epochs=5)
    records = []
    result = _trainer(spec, digits, tmp_path).fit(records.append)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4, 5]
    assert {"train_loss", "train_ce", "val_accuracy", "epoch_seconds", "samples_per_second", "lr"} <= set(records[0])
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert result.metrics["test_accuracy"] > 0.85
    assert result.logits["train"].shape == (len(digits.train), 10)
    model = spec.model_factory()
    model.load_state_dict(result.state_dict)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(digits.test.x[[7, 3]]), result.logits["test"][[7, 3]], atol=1e-5)


def test_interrupted_training_resumes_and_matches_an_undisturbed_run(digits, tmp_path):
    spec = _spec(digits, epochs=4)
    undisturbed = _trainer(spec, digits, tmp_path / "a").fit()

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        _trainer(spec, digits, tmp_path / "b").fit(stop_after_two)
    epochs_seen = []
    resumed = _trainer(spec, digits, tmp_path / "b").fit(lambda r: epochs_seen.append(r["epoch"]))
    assert resumed.resumed_from_epoch == 2
    assert epochs_seen == [3, 4], "only the missing epochs are trained"
    assert len(resumed.history) == 4
    for key, value in undisturbed.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), f"{key} differs after resume"


def test_finished_work_is_reused_without_training(digits, tmp_path):
    spec = _spec(digits, epochs=2)
    first = _trainer(spec, digits, tmp_path).fit()
    calls = []
    second = _trainer(spec, digits, tmp_path).fit(calls.append)
    assert second.reused and not calls
    assert torch.equal(second.logits["val"], first.logits["val"])
    assert json.loads((tmp_path / "result.json").read_text())["metrics"] == first.metrics


def test_a_corrupt_checkpoint_falls_back_to_the_previous_one(digits, tmp_path):
    spec = _spec(digits, epochs=4)

    def stop_after_three(record):
        if record["epoch"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        _trainer(spec, digits, tmp_path).fit(stop_after_three)
    newest = tmp_path / "checkpoints" / "epoch_0003.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated, e.g. by a crash of the disk
    assert CheckpointDir(tmp_path / "checkpoints").latest()["epoch"] == 2
    assert _trainer(spec, digits, tmp_path).fit().resumed_from_epoch == 2


def test_a_checkpoint_of_another_model_is_refused(digits, tmp_path):
    spec = _spec(digits, epochs=3)
    with pytest.raises(Interrupt):
        _trainer(spec, digits, tmp_path).fit(lambda r: (_ for _ in ()).throw(Interrupt()))
    other = Trainer(spec, _splits(digits), tmp_path, "another-fingerprint")
    with pytest.raises(CheckpointError, match="another model or config"):
        other.fit()


def test_divergence_stops_with_a_clear_message(digits, tmp_path):
    spec = _spec(digits, epochs=3, optimizer={"name": "sgd", "lr": 1e30, "momentum": 0.9})
    with pytest.raises(TrainingDiverged, match="member_0: training loss became"):
        _trainer(spec, digits, tmp_path).fit()


def test_early_stopping_keeps_the_best_validation_weights(digits, tmp_path):
    spec = _spec(digits, epochs=30, early_stopping_patience=1, optimizer={"name": "sgd", "lr": 0.5, "momentum": 0.9})
    result = _trainer(spec, digits, tmp_path).fit()
    assert result.metrics["epochs_trained"] < 30
    best = max(r["val_accuracy"] for r in result.history)
    assert result.metrics["val_accuracy"] == pytest.approx(best)


def test_onecycle_steps_after_every_batch_with_the_hand_computed_rates(digits, tmp_path):
    import math

    from ensemble.schema.sections import SchedulerConfig
    from ensemble.data.split import Split

    # 320 examples at batch 64: 5 steps an epoch, 10 in all; warm-up ends at step 0.3 * 10 - 1 = 2.
    splits = {"train": Split(digits.train.x[:320], digits.train.y[:320]), "val": digits.val}
    train = quick_train(2).model_copy(update={"scheduler": SchedulerConfig(name="onecycle", pct_start=0.3)})
    train.optimizer.lr = 0.1
    spec = TrainSpec("m", "member", small_mlp_factory(digits.input_shape, digits.num_classes), train, seed=1)
    records = []
    Trainer(spec, splits, tmp_path, spec.fingerprint("x")).fit(records.append)

    lowest = 0.1 / 25 / 1e4  # max_lr / div_factor / final_div_factor

    def down(step):  # cosine from 0.1 at step 2 to `lowest` at step 9
        return lowest + (0.1 - lowest) / 2 * (1 + math.cos(math.pi * (step - 2) / (9 - 2)))

    # A record's lr is the rate after the epoch's last batch: after 5 steps, 0.1 / 2 * (1 + cos(3 pi / 7)) = 0.0611.
    # Stepping once an epoch would leave it at step 1 of the warm-up, 0.004 + 0.096 * (1 - cos(pi / 2)) / 2 = 0.052.
    assert records[0]["lr"] == pytest.approx(down(5), rel=1e-6)
    assert records[0]["lr"] == pytest.approx(0.0611, abs=1e-4)
    state = CheckpointDir(tmp_path / "checkpoints").latest()
    assert state["scheduler"]["last_epoch"] == 10


def test_select_last_keeps_the_last_epoch_not_the_best_one(digits, tmp_path):
    # lr 2 makes validation accuracy fall after the first epochs, so best and last differ.
    best = _trainer(_spec(digits, epochs=4, optimizer={"lr": 2.0}), digits, tmp_path / "best").fit()
    assert best.metrics["best_epoch"] < 4, "the case needs a run whose best epoch is not its last"
    spec = _spec(digits, epochs=4, optimizer={"lr": 2.0}, select="last")
    last = _trainer(spec, digits, tmp_path / "last").fit()
    assert last.metrics["best_epoch"] == 4
    final_checkpoint = CheckpointDir(tmp_path / "last" / "checkpoints").latest()
    assert final_checkpoint["epoch"] == 4
    for name, tensor in final_checkpoint["model"].items():
        assert torch.equal(last.state_dict[name], tensor)


def test_in_memory_inputs_move_to_the_device_only_when_they_fit(digits):
    from ensemble.training.trainer import inputs_on_device

    splits = {"train": digits.train, "val": digits.val}
    nbytes = sum(s.x.element_size() * s.x.nelement() for s in splits.values())  # float32 8x8 images
    meta = torch.device("meta")  # a device with no memory: where the tensors go is all this checks
    moved = inputs_on_device(splits, meta, free_bytes=2 * nbytes)
    assert {s.x.device.type for s in moved.values()} == {"meta"}
    assert {s.y.device.type for s in moved.values()} == {"cpu"}, "labels stay on the host"
    assert digits.train.x.device.type == "cpu", "the caller's splits are not changed"
    kept = inputs_on_device(splits, meta, free_bytes=2 * nbytes - 1)  # over half the free memory: left alone
    assert kept is splits
