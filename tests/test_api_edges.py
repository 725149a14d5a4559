"""The Python API at its edges, as scikit-learn users call it: numpy arrays or tensors as (x, y) pairs, whole-number
float labels, one-line errors for bad data at every entry point that takes data, for ``fit(x, y)`` and for unknown
keywords (naming the nearest valid one), and ``predict_proba`` / ``predict`` on all three classes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import quick_train, small_mlp_factory

from distill import Distiller
from ensemble import Ensemble
from ensemble.base.errors import ConfigError, DistillError
from specialists import SpecialistEnsemble

QUIET = {"in_process": True, "show_progress": False}


def pair(split) -> tuple[np.ndarray, np.ndarray]:
    return split.x.numpy(), split.y.numpy()


@pytest.fixture(scope="module")
def factory(digits):
    return small_mlp_factory(digits.input_shape, digits.num_classes, hidden=(16,))


@pytest.fixture(scope="module")
def fitted(digits, factory, tmp_path_factory):
    """One fitted model of each class (1 epoch, in this process)."""
    root = tmp_path_factory.mktemp("fitted")
    train, val = digits.train, digits.val
    ens = Ensemble(factory, {"members": 1, "train": quick_train(1)}, output_dir=root / "ens", **QUIET).fit(train, val)
    spec = SpecialistEnsemble(ens.members_[0], {"count": 2, "train": quick_train(1)}, generalist_factory=factory,
                              output_dir=root / "spec", **QUIET).fit(train, val)
    student = Distiller(ens, factory, {"temperature": 4, "baseline": False, "train": quick_train(1)},
                        output_dir=root / "student", **QUIET).fit(train, val)
    return {"ensemble": ens, "specialists": spec, "student": student}


def _ensemble_predictions(digits, factory, folder, train, val) -> torch.Tensor:
    ens = Ensemble(factory, {"members": 1, "train": quick_train(1)}, output_dir=folder, **QUIET).fit(train, val)
    return ens.predict_proba(digits.test.x)


def test_numpy_pairs_train_and_predict_as_tensors_do(digits, factory, tmp_path):
    """float64 arrays and whole-number float labels (numpy's defaults) train the very model tensors train."""
    reference = _ensemble_predictions(digits, factory, tmp_path / "tensors", (digits.train.x, digits.train.y),
                                      (digits.val.x, digits.val.y))
    x, y = pair(digits.train)
    from_numpy = _ensemble_predictions(digits, factory, tmp_path / "numpy", (x.astype(np.float64), y),
                                       (digits.val.x.numpy(), digits.val.y.numpy().astype(np.float32)))
    assert torch.equal(from_numpy, reference)
    assert 0.5 < float((reference.argmax(1) == digits.test.y).float().mean()) <= 1, "it did train"


def test_uint8_pairs_are_images_scaled_to_one(digits, factory, tmp_path):
    """uint8 inputs are 0..255 images, read as x / 255 (as ImageFolder's are), not as 0..255 floats."""
    levels = (digits.train.x * 16).round().to(torch.uint8) * 15, (digits.val.x * 16).round().to(torch.uint8) * 15
    as_uint8 = _ensemble_predictions(digits, factory, tmp_path / "uint8", (levels[0].numpy(), digits.train.y),
                                     (levels[1].numpy(), digits.val.y))
    scaled = _ensemble_predictions(digits, factory, tmp_path / "float", (levels[0].float() / 255, digits.train.y),
                                   (levels[1].float() / 255, digits.val.y))
    assert torch.equal(as_uint8, scaled)
    with pytest.warns(UserWarning, match=r"train x holds whole numbers up to 240: unscaled 0..255 pixels\?"):
        with pytest.raises(DistillError, match="^val"):  # warned before anything trains
            Ensemble(factory, output_dir=tmp_path, **QUIET).fit((levels[0].double(), digits.train.y), (levels[1], None))


def _bad_pairs(x: np.ndarray, y: np.ndarray) -> dict:
    """Each bad (x, y) and the words its one-line error must hold (besides the argument's name)."""
    nan_x = x.copy()
    nan_x[3, 0, 2, 2] = np.nan
    nan_y = y.astype(np.float64)
    nan_y[4] = np.nan
    fractional = y.astype(np.float64)
    fractional[5] = 2.5
    return {
        "fractional labels": ((x, fractional), "found 2.5 at row 5"),
        "NaN labels": ((x, nan_y), "labels contain NaN"),
        "NaN inputs": ((nan_x, y), "inputs contain NaN or infinite values (1 rows, first at row 3)"),
        "string labels": ((x, y.astype(str)), "integer class indices"),
        "one-hot labels": ((x, np.eye(10)[y]), "y.argmax(1)"),
        "length mismatch": ((x, y[:-1]), f"x has {len(x)} rows but y has {len(y) - 1} labels"),
        "1-D inputs": ((x[:, 0, 0, 0], y), "one row per example"),
        "integer inputs": (((x * 16).astype(np.int64), y), "int64 inputs have no known scale"),
        "other example shape": ((x.reshape(len(x), -1), y), "each example must have shape (1, 8, 8)"),
        "empty": ((x[:0], y[:0]), "has no examples"),
        "bare array": (x, "pass each split as an (x, y) pair"),
        "three items": ((x, y, y), "expected an (x, y) pair"),
    }


def _fit_calls(digits, factory, tmp_path):
    """Every ``fit`` of the API with a bad split in each place (and the name its errors give that split); each
    model is untrained, so nothing trains before the check."""
    teacher = factory()
    classes = {
        "Ensemble": lambda: Ensemble(factory, {"members": 1}, output_dir=tmp_path, **QUIET),
        "SpecialistEnsemble": lambda: SpecialistEnsemble(factory(), {"count": 2}, output_dir=tmp_path, **QUIET),
        "Distiller": lambda: Distiller(teacher, factory, output_dir=tmp_path, **QUIET),
    }
    good = [pair(digits.train), pair(digits.val), pair(digits.test)]
    for cls, make in classes.items():
        for place, where in enumerate(("transfer" if cls == "Distiller" else "train", "val", "test")):
            def call(bad, make=make, place=place):
                make().fit(*good[:place], bad, *good[place + 1:])
            yield f"{cls}.fit {where}", where, call


def test_fractional_labels_are_refused_not_truncated(digits, factory, tmp_path):
    """Tensors too: 2.5 is no class, so it is refused by name rather than trained on as class 2."""
    labels = digits.train.y.double()
    labels[7] = 2.5
    one_epoch = {"train": quick_train(1)}
    models = [Ensemble(factory, {"members": 1, **one_epoch}, output_dir=tmp_path / "e", **QUIET),
              SpecialistEnsemble(factory(), {"count": 2, **one_epoch}, output_dir=tmp_path / "s", **QUIET),
              Distiller(factory(), factory, {"baseline": False, **one_epoch}, output_dir=tmp_path / "d", **QUIET)]
    for model, where in zip(models, ("train", "train", "transfer")):
        with pytest.raises(DistillError) as err:
            model.fit((digits.train.x, labels), digits.val)
        assert str(err.value) == (f"{where} y: labels must be whole class indices, found 2.5 at row 7 (1 fractional); "
                                  "round or map them to 0..C-1 yourself")


def test_every_fit_refuses_bad_data_in_one_line_naming_the_split(digits, factory, tmp_path):
    cases = _bad_pairs(*pair(digits.test))
    checked = 0
    for entry, where, call in _fit_calls(digits, factory, tmp_path):
        for case, (bad, words) in cases.items():
            if where in ("train", "transfer") and case == "other example shape":
                continue  # the training split sets the shape
            with pytest.raises(DistillError) as err:
                call(bad)
            message = str(err.value)
            assert "\n" not in message, (entry, case, message)
            assert message.startswith(where) and words in message, (entry, case, message)
            checked += 1
    assert checked == 3 * 3 * 12 - 3


def _inference_calls(fitted):
    for name, model in fitted.items():
        yield f"{name}.predict_proba", lambda x, model=model: model.predict_proba(x)
        yield f"{name}.predict", lambda x, model=model: model.predict(x)
    yield "Distiller.export", lambda x: fitted["student"].export("unused.pt2", example=x)


def test_every_inference_entry_checks_its_inputs_the_same_way(fitted, digits, tmp_path):
    x = digits.test.x.numpy()
    nan_x = x.copy()
    nan_x[1, 0, 0, 0] = np.inf
    bad_inputs = {
        "NaN": (nan_x, "x: inputs contain NaN or infinite values (1 rows, first at row 1)"),
        "1-D": (x[:, 0, 0, 0], "x: inputs must have one row per example"),
        "other example shape": (x.reshape(len(x), -1), "x: each example must have shape (1, 8, 8) as in training"),
        "strings": (x.astype(str), "x: inputs must be numbers"),
        "int32": (torch.from_numpy(x).int(), "x: int32 inputs have no known scale"),
        "a list": (x.tolist(), "x: expected a numpy array or tensor of inputs, got list"),
    }
    for entry, call in _inference_calls(fitted):
        for case, (bad, words) in bad_inputs.items():
            with pytest.raises(DistillError) as err:
                call(bad)
            message = str(err.value).replace("example: ", "x: ")
            assert "\n" not in message and message.startswith(words), (entry, case, message)


def test_every_evaluate_checks_its_split_the_same_way(fitted, digits):
    x, y = pair(digits.test)
    for name, model in fitted.items():
        for bad, words in _bad_pairs(x, y).values():
            with pytest.raises(DistillError) as err:
                model.evaluate(bad)
            assert "\n" not in str(err.value) and str(err.value).startswith("test") and words in str(err.value), name
        assert model.evaluate((x, y.astype(np.float32))).scores, "whole-number float labels are labels"


def test_fit_x_y_is_one_line_naming_the_expected_form(digits, factory, tmp_path):
    x, y = pair(digits.train)
    models = [Ensemble(factory, output_dir=tmp_path, **QUIET), SpecialistEnsemble(factory(), output_dir=tmp_path),
              Distiller(factory(), factory, output_dir=tmp_path)]
    for model in models:
        with pytest.raises(ConfigError) as err:
            model.fit(x, y)
        assert str(err.value) == (f"{type(model).__name__}.fit(x, y) is not supported: fit takes splits, each an "
                                  "(x, y) pair, and a validation split: fit((x_train, y_train), (x_val, y_val), "
                                  "test=(x_test, y_test))")


@pytest.mark.parametrize("build, keyword, nearest", [
    (lambda f, **kw: Ensemble(f, **kw), "n_member", "n_members"),
    (lambda f, **kw: Ensemble(f, **kw), "generalist_trian", "generalist_train"),
    (lambda f, **kw: Ensemble(f, **kw), "output_dri", "output_dir"),
    (lambda f, **kw: SpecialistEnsemble(f(), **kw), "n_specialist", "n_specialists"),
    (lambda f, **kw: SpecialistEnsemble(f(), **kw), "topn", "top_n"),
    (lambda f, **kw: Distiller(f(), f, **kw), "temprature", "temperature"),
    (lambda f, **kw: Distiller(f(), f, **kw), "num_cpu", "num_cpus"),
])
def test_an_unknown_keyword_names_the_class_and_the_nearest_valid_one(factory, build, keyword, nearest):
    with pytest.raises(ConfigError) as err:
        build(factory, **{keyword: 3})
    cls = str(err.value).split(":")[0]
    assert str(err.value) == f"{cls}: unknown keyword argument {keyword!r}; did you mean {nearest!r}?"
    assert cls in ("Ensemble", "SpecialistEnsemble", "Distiller")


def test_an_unknown_keyword_with_nothing_near_lists_the_valid_ones(factory):
    with pytest.raises(ConfigError) as err:
        Ensemble(factory, zzz=1)
    message = str(err.value)
    assert message.startswith("Ensemble: unknown keyword argument 'zzz'; expected one of ")
    assert "n_members" in message and "output_dir" in message and "hflip" in message
    assert "'members'" not in message and ", members," not in message, "a positional parameter is no keyword"


def test_the_student_predicts_its_own_softmax(fitted, digits):
    student = fitted["student"]
    x = digits.test.x
    model = student.student_.eval()
    with torch.no_grad():
        z = model(x) / 3.0
    by_hand = torch.exp(z - z.max(dim=1, keepdim=True).values)
    by_hand = by_hand / by_hand.sum(dim=1, keepdim=True)
    probs = student.predict_proba(x.numpy(), temperature=3.0)
    assert probs.shape == (len(x), 10)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(x)), atol=1e-6)
    assert torch.allclose(probs, by_hand, atol=1e-6)
    assert torch.equal(student.predict(x), student.predict_proba(x).argmax(dim=1))
    assert torch.equal(student.predict(x), z.argmax(dim=1)), "T does not change the argmax"


def test_all_three_classes_predict_the_argmax_of_predict_proba(fitted, digits):
    x = digits.test.x
    for name, model in fitted.items():
        probs = model.predict_proba(x)
        assert torch.allclose(probs.sum(dim=1), torch.ones(len(x)), atol=1e-5), name
        assert torch.equal(model.predict(x.numpy()), probs.argmax(dim=1)), name
    ens = fitted["ensemble"]
    assert torch.equal(ens.predict(x, mean="geometric"), ens.predict_proba(x, mean="geometric").argmax(dim=1))


def test_inference_before_fit_says_so(factory):
    for model in (Ensemble(factory), SpecialistEnsemble(factory()), Distiller(factory(), factory)):
        for call in (model.predict_proba, model.predict):
            with pytest.raises(RuntimeError, match=f"this {type(model).__name__} is not fitted yet"):
                call(torch.zeros(2, 1, 8, 8))
