"""Datasets checked once at load time (issue 24, items 1, 6 and 7's data cases), through the real ``distill`` CLI:
uint8 npz images are scaled like ImageFolder's, a streamed ImageFolder normalises with its true statistics, and
each bad dataset is one stderr line naming the file or array (exit 2, no traceback, nothing printed by libpng).
A seeded generator then damages npz arrays in every way the loader checks, in-process, and asserts the same."""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from servers import run_distill
from torchvision.io import write_png

from ensemble.data.registry import load_dataset
from ensemble.base.errors import DataError
from ensemble.data.rows import as_input

CASE_SECONDS = 30
BASE = ["--set", "ensemble.members=1", "--set", "ensemble.train.epochs=1", "--set", "generalist.enabled=false",
        "--no-progress"]


@pytest.fixture(scope="module")
def joins_test_ray(ray_cpu) -> dict:
    """Each CLI run joins this session's Ray (as a submitted job joins its cluster), so it measures the CLI."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}


def _distill(tmp: Path, env: dict, *args: str, timeout: float = 120):
    out, uri = tmp / "out", f"sqlite:///{tmp}/mlflow.db"
    return run_distill(["ensemble", "--output-dir", str(out), "--tracking-uri", uri, *BASE, *args], timeout, env=env)


def _digits_arrays() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:, None] / 16).astype(np.float32)
    y = digits.target.astype(np.int64)
    return {"x_train": x[:1400], "y_train": y[:1400], "x_test": x[1400:], "y_test": y[1400:]}


def _npz(tmp: Path, **changes) -> str:
    arrays = {**_digits_arrays(), **changes}
    path = tmp / "data.npz"
    np.savez(path, **arrays)
    return str(path)


def _grey_folder(root: Path, per_class: int = 4) -> Path:
    generator = torch.Generator().manual_seed(0)
    for part in ("train", "test"):
        for name in ("a", "b"):
            (root / part / name).mkdir(parents=True)
            for i in range(per_class):
                image = torch.randint(0, 256, (1, 8, 8), generator=generator, dtype=torch.uint8)
                write_png(image, str(root / part / name / f"{i}.png"))
    return root


def _damage_pixels(path: Path) -> None:
    """Flip bytes inside the compressed pixels and fix the chunk's checksum: the header is fine, the data is not
    (libpng: "IDAT: invalid ..."; torchvision 0.29 then crashes the process)."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT")
    length = int.from_bytes(data[start - 4 : start], "big")
    data[start + 6] ^= 0xFF
    crc = zlib.crc32(bytes(data[start : start + 4 + length]))
    data[start + 4 + length : start + 8 + length] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def _folder_with(tmp: Path, odd) -> str:
    root = _grey_folder(tmp / "images")
    odd(root / "train" / "b" / "3.png")
    return str(root)


def _sixteen(path: Path) -> None:
    write_png(torch.zeros((1, 16, 16), dtype=torch.uint8), str(path))


def _rgb(path: Path) -> None:
    write_png(torch.zeros((3, 8, 8), dtype=torch.uint8), str(path))


def _fractional_labels() -> dict:
    y = _digits_arrays()["y_train"].astype(np.float64)
    y[7] = 2.5
    return {"y_train": y}


def _empty_test() -> dict:
    arrays = _digits_arrays()
    return {"x_test": arrays["x_test"][:0], "y_test": arrays["y_test"][:0]}


# (id, dataset arguments built in the case's temp dir, texts the one line must contain)
CASES = [
    ("npz with an empty test split", lambda t: ["data.name=npz", f"data.root={_npz(t, **_empty_test())}"],
     ["data.npz x_test/y_test hold no examples"]),
    ("npz with fractional labels", lambda t: ["data.name=npz", f"data.root={_npz(t, **_fractional_labels())}"],
     ["data.npz y_train", "2.5 at row 7"]),
    ("npz with int64 images", lambda t: ["data.name=npz", "data.root=" + _npz(
        t, x_train=np.round(_digits_arrays()["x_train"] * 255).astype(np.int64))], ["data.npz x_train holds int64"]),
    ("imagefolder with one 16x16 image among 8x8",
     lambda t: ["data.name=imagefolder", f"data.root={_folder_with(t, _sixteen)}"],
     ["train/b/3.png is 16x16 L", "(8x8 L, shape (1, 8, 8)"]),
    ("imagefolder with one RGB image among grey ones",
     lambda t: ["data.name=imagefolder", f"data.root={_folder_with(t, _rgb)}"],
     ["train/b/3.png is 8x8 RGB", "(8x8 L, shape (1, 8, 8)"]),
    ("imagefolder with a damaged PNG",
     lambda t: ["data.name=imagefolder", f"data.root={_folder_with(t, _damage_pixels)}"],
     ["train/b/3.png: cannot be read"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_a_bad_dataset_is_one_line_naming_the_file_or_array(case, joins_test_ray, tmp_path):
    name, dataset, expected = case
    sets = [arg for item in dataset(tmp_path) for arg in ("--set", item)]
    done, seconds = _distill(tmp_path, joins_test_ray, *sets, timeout=CASE_SECONDS)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, f"{name}: exit {done.returncode}, stderr {lines[-5:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {lines}"
    for text in expected:
        assert text in lines[0], f"{name}: {lines[0]!r} does not say {text!r}"
    assert "Traceback" not in done.stderr and "libpng" not in done.stderr
    assert seconds < CASE_SECONDS


def test_uint8_npz_images_are_scaled_to_0_1_and_train_like_floats(joins_test_ray, tmp_path):
    floats = _digits_arrays()
    pixels = {k: (np.round(v * 255).astype(np.uint8) if k.startswith("x_") else v) for k, v in floats.items()}
    path = tmp_path / "pixels.npz"
    np.savez(path, **pixels)
    data = load_dataset("npz", str(path))
    expected = torch.from_numpy(pixels["x_test"]).float() / 255  # what torchvision's ToTensor gives
    assert data.test.x.dtype == torch.uint8 and torch.equal(as_input(data.test.x), expected)

    done, _ = _distill(tmp_path, joins_test_ray, "--set", "data.name=npz", "--set", f"data.root={path}")
    assert done.returncode == 0, done.stderr[-2000:]
    accuracy = json.loads((tmp_path / "out" / "results.json").read_text())["ensemble"]["test_accuracy"]
    # Unscaled 0..255 inputs leave this 1-epoch MLP at chance (0.098); scaled, digits are easy.
    assert accuracy > 0.5


def _stats_folder(root: Path) -> Path:
    """4x4 RGB images whose every image has the same per-channel statistics (so any validation carve leaves them):
    channel 0 half 0, half 255 (mean 1/2, std 1/2); channel 1 a quarter 255 (mean 1/4, std sqrt(3)/4); channel 2
    half 51, half 153 (0.2 and 0.6: mean 0.4, std 0.2). The bright half or quarter tells the two classes apart."""
    for part, count in (("train", 6), ("test", 2)):
        for c, name in enumerate(("left", "right")):
            (root / part / name).mkdir(parents=True)
            image = torch.zeros((3, 4, 4), dtype=torch.uint8)
            image[0, :, 2 * c : 2 * c + 2] = 255
            image[1, 2 * c : 2 * c + 2, 2 * c : 2 * c + 2] = 255
            image[2] = 51
            image[2, :, 2 * c : 2 * c + 2] = 153
            for i in range(count):
                write_png(image, str(root / part / name / f"{i}.png"))
    return root


def test_a_streamed_image_folder_normalises_with_its_training_statistics(joins_test_ray, tmp_path):
    root = _stats_folder(tmp_path / "images")
    done, _ = _distill(tmp_path, joins_test_ray, "--set", "data.name=imagefolder", "--set", f"data.root={root}",
                       "--set", "data.normalize=true", "--set", "data.in_memory=false")
    assert done.returncode == 0, done.stderr[-2000:]
    (model,) = (tmp_path / "out" / "ensemble").glob("member_0-*/model.pt")
    state = torch.load(model, weights_only=True)
    assert state["0.mean"].flatten().tolist() == pytest.approx([0.5, 0.25, 0.4], abs=1e-6)
    assert state["0.std"].flatten().tolist() == pytest.approx([0.5, math.sqrt(3) / 4, 0.2], abs=1e-6)


# --- the same checks in-process: the cases a CLI run would only repeat ---


def test_a_validation_split_that_takes_every_example_is_refused(tmp_path):
    arrays = _digits_arrays()
    path = _npz(tmp_path, x_train=arrays["x_train"][:1], y_train=arrays["y_train"][:1])
    with pytest.raises(DataError, match=r"^data.val_size: .* leaves none to train on"):
        load_dataset("npz", path)


def test_whole_float_labels_are_class_indices(tmp_path):
    arrays = _digits_arrays()
    data = load_dataset("npz", _npz(tmp_path, y_test=arrays["y_test"].astype(np.float32)))
    assert data.test.y.dtype == torch.int64 and data.test.y.tolist() == arrays["y_test"].tolist()


def test_float_images_of_raw_pixels_are_warned_about(tmp_path, caplog):
    pixels = np.round(_digits_arrays()["x_train"] * 255)
    load_dataset("npz", _npz(tmp_path, x_train=pixels))
    assert any("x_train holds whole numbers up to 255" in r.getMessage() for r in caplog.records)


def test_an_image_that_is_no_image_is_named_at_load_time(tmp_path):
    root = _grey_folder(tmp_path / "images")
    (root / "test" / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match=r"test/a/1\.png: cannot be read as an image"):
        load_dataset("imagefolder", str(root), in_memory=False)


def test_a_damaged_png_streamed_through_workers_is_one_line(tmp_path):
    root = _grey_folder(tmp_path / "images")
    _damage_pixels(root / "test" / "b" / "2.png")
    data = load_dataset("imagefolder", str(root), in_memory=False, num_workers=1)
    with pytest.raises(DataError) as caught:
        list(data.test.x.batches(torch.arange(len(data.test)), 4))
    assert str(caught.value).startswith(str(root / "test" / "b" / "2.png") + ": cannot be read")
    assert "\n" not in str(caught.value), "the worker's traceback is not part of the message"


DAMAGES = ("none", "empty", "fraction", "int_inputs", "nan", "length", "shape", "onehot", "range", "strings")


def _draw(rng: np.random.Generator, kind: str) -> tuple[dict, str | None]:
    """One npz with ``kind`` of damage, at a random place; the array the error must name, or None."""
    n_train, n_test = int(rng.integers(3, 12)), int(rng.integers(1, 6))
    arrays = {"x_train": rng.random((n_train, 1, 3, 3), dtype=np.float32), "y_train": rng.integers(0, 3, n_train),
              "x_test": rng.random((n_test, 1, 3, 3), dtype=np.float32), "y_test": rng.integers(0, 3, n_test)}
    arrays["y_train"][0] = 2  # three classes, whatever the test labels drawn
    part = rng.choice(["train", "test"])
    x, y = f"x_{part}", f"y_{part}"
    if kind == "empty":
        arrays[x], arrays[y] = arrays[x][:0], arrays[y][:0]
    elif kind == "fraction":
        arrays[y] = arrays[y] + 0.25
    elif kind == "int_inputs":
        arrays[x] = (arrays[x] * 255).astype(rng.choice([np.int16, np.int32, np.int64, np.uint16]))
    elif kind == "nan":
        arrays[x][0, 0, 1, 1] = rng.choice([np.nan, np.inf, -np.inf])
    elif kind == "length":
        arrays[y] = arrays[y][:-1]
    elif kind == "shape":
        arrays["x_test"] = arrays["x_test"][:, :, :2]
        return arrays, "x_test"
    elif kind == "onehot":
        arrays[y] = np.eye(3)[arrays[y]]
    elif kind == "range":
        arrays["y_test"] = np.full(n_test, 7)
        return arrays, "data.npz test split: labels must lie in [0, 2]"
    elif kind == "strings":
        arrays[y] = arrays[y].astype(str)
    return arrays, (None if kind == "none" else (y if kind in ("fraction", "onehot", "strings") else x))


def test_generated_damaged_npz_arrays_are_one_line_naming_the_array(tmp_path):
    rng = np.random.default_rng(24)
    kinds = rng.choice(DAMAGES, 60)
    assert set(kinds) == set(DAMAGES), "every damage is drawn"
    for case, kind in enumerate(kinds):
        arrays, named = _draw(rng, str(kind))
        path = tmp_path / f"case_{case}" / "data.npz"
        path.parent.mkdir()
        np.savez(path, **arrays)
        try:
            data = load_dataset("npz", str(path), val_size=0.3)
        except DataError as err:
            message = str(err)
            assert named is not None, f"case {case}: a valid npz was refused: {message}"
            assert "\n" not in message and named in message, f"case {case} ({kind}): {message!r} lacks {named!r}"
            assert message.startswith("data.root: ") and str(path) in message, f"case {case}: the file is named"
        else:
            assert named is None, f"case {case}: {kind} damage to {named} was not caught"
            assert data.train.x.dtype == torch.float32 and data.test.y.dtype == torch.int64
