"""The data layer: real datasets, seeded splits, jitter, and clear errors for bad data."""

import pytest
import torch

from ensemble.data.split import Split, check_split
from ensemble.data.augment import jitter
from ensemble.data.registry import load_dataset, materialize
from ensemble.base.errors import DataError


def test_digits_split_is_seeded_disjoint_and_complete(digits):
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert len(digits.train) + len(digits.val) + len(digits.test) == 1797
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.val.x, digits.val.x)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.val.x, digits.val.x)
    assert torch.equal(other.test.x, digits.test.x), "the test split never depends on the seed"
    train_rows = {tuple(r.tolist()) for r in digits.train.x.flatten(1)}
    assert not any(tuple(r.tolist()) in train_rows for r in digits.test.x.flatten(1)[:50])


def test_real_mnist_loads_from_the_shared_folder(mnist_root):
    data = load_dataset("mnist", root=mnist_root, val_size=0.1, seed=0)
    assert data.input_shape == (1, 28, 28)
    assert (len(data.train), len(data.val), len(data.test)) == (54000, 6000, 10000)
    assert int((data.test.y == 3).sum()) == 1010
    assert 0.0 <= float(data.train.x.min()) and float(data.train.x.max()) <= 1.0


def test_missing_files_say_where_they_were_looked_for(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=str(tmp_path), download=False)
    message = str(info.value)
    assert str(tmp_path) in message and "data.download" in message and "\n" not in message


def test_jitter_moves_each_image_by_at_most_k_pixels():
    x = torch.zeros(200, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    shifted = jitter(x, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == x.shape
    assert torch.all(shifted.sum(dim=(1, 2, 3)) == 1), "a centred pixel stays inside the image"
    rows, cols = shifted[:, 0].nonzero()[:, 1], shifted[:, 0].nonzero()[:, 2]
    assert rows.min() == 2 and rows.max() == 6 and cols.min() == 2 and cols.max() == 6
    assert len({(int(r), int(c)) for r, c in zip(rows, cols)}) == 25, "all 5x5 offsets occur"
    assert torch.equal(jitter(x, 0), x)


def test_jitter_fills_with_zeros_at_the_border():
    x = torch.ones(50, 1, 4, 4)
    shifted = jitter(x, 1, torch.Generator().manual_seed(1))
    assert set(shifted.sum(dim=(1, 2, 3)).tolist()) <= {16.0, 12.0, 9.0}


def test_bad_labels_and_nan_inputs_are_caught():
    with pytest.raises(DataError, match=r"labels must lie in \[0, 9\]"):
        check_split(Split(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 10])), 10, "train")
    bad = torch.zeros(3, 1, 2, 2)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        check_split(Split(bad, torch.tensor([0, 1, 2])), 10, "train")


def test_materialize_accepts_map_style_datasets_and_tensor_pairs():
    class Squares(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.full((1, 2, 2), float(i)), i % 2

    split = materialize(Squares())
    assert split.x.shape == (4, 1, 2, 2) and split.y.tolist() == [0, 1, 0, 1]
    assert len(materialize((torch.zeros(5, 3), torch.zeros(5)))) == 5
    with pytest.raises(DataError, match="map-style"):
        materialize(object(), "train")
