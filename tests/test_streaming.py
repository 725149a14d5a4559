"""Streamed data: an ImageFolder of PNG files read a batch at a time, never materialised, and its bad input."""

import pytest
import torch
from torchvision.io import write_png

from ensemble import Ensemble
from ensemble.data.registry import load_dataset
from ensemble.base.errors import DataError
from ensemble.data.streaming import LazyImages
from helpers import small_mlp_factory


def _write_folder(root, classes=("a", "b", "c"), train=24, test=6, seed=0):
    """Gray 8x8 PNGs whose brightest row depends on the class, so a small net can learn them."""
    generator = torch.Generator().manual_seed(seed)
    for part, count in (("train", train), ("test", test)):
        for c, name in enumerate(classes):
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = torch.randint(0, 60, (1, 8, 8), generator=generator, dtype=torch.uint8)
                image[0, 2 * c : 2 * c + 2] = 250
                write_png(image, str(folder / f"{i}.png"))
    return root


@pytest.fixture
def folder(tmp_path):
    return _write_folder(tmp_path / "images")


def test_an_image_folder_streams_uint8_batches_and_labels_without_decoding(folder):
    data = load_dataset("imagefolder", str(folder), val_size=0.25, in_memory=False)
    assert isinstance(data.train.x, LazyImages) and data.class_names == ["a", "b", "c"]
    assert len(data.train) + len(data.val) == 72 and len(data.test) == 18 and data.input_shape == (1, 8, 8)
    batch = data.test.x[torch.tensor([0, 17])]
    assert batch.dtype == torch.uint8 and batch.shape == (2, 1, 8, 8)
    assert data.test.y.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert batch[1, 0, 4:6].min() == 250, "example 17 is class c: rows 4-5 are bright"
    assert data.train.fingerprint() == load_dataset("imagefolder", str(folder), val_size=0.25,
                                                    in_memory=False).train.fingerprint()


def test_streamed_and_in_memory_training_give_the_same_model(folder, tmp_path, ray_cpu):
    streamed = load_dataset("imagefolder", str(folder), val_size=0.25, in_memory=False, num_workers=1)
    decoded = load_dataset("imagefolder", str(folder), val_size=0.25, in_memory=False,
                           decoded_cache=str(tmp_path / "decoded"))
    in_memory = load_dataset("imagefolder", str(folder), val_size=0.25, in_memory=True)
    assert in_memory.train.x.dtype == torch.uint8, "images stay uint8 in memory too"
    factory = small_mlp_factory((1, 8, 8), 3)
    datasets = {"streamed": streamed, "decoded": decoded, "memory": in_memory}
    fitted = []
    for name, data in datasets.items():
        # The streamed ones train in a Ray actor, which reads the PNG files (or maps the decoded array) itself.
        ens = Ensemble(factory, {"members": 1, "train": {"epochs": 15, "batch_size": 16}}, output_dir=tmp_path / name,
                       show_progress=False, in_process=name == "memory")
        fitted.append(ens.fit(data.train, data.val, data.test))
    scores = [e.evaluate(d.test)["member_0"] for e, d in zip(fitted, datasets.values())]
    assert scores[0] == scores[1] == scores[2] and scores[0].accuracy > 0.9
    for other in fitted[1:]:
        for a, b in zip(fitted[0].members_[0].parameters(), other.members_[0].parameters()):
            assert torch.allclose(a, b, atol=1e-6), "same batches, same order, same model"


def _decode_file(path) -> torch.Tensor:
    from torchvision.io import decode_png, read_file

    return decode_png(read_file(str(path)))


def test_the_decoded_cache_holds_each_file_and_follows_edits(folder, tmp_path):
    import pickle

    cache = tmp_path / "decoded"
    data = load_dataset("imagefolder", str(folder), val_size=0.25, in_memory=False, decoded_cache=str(cache))
    x = data.train.x
    assert x.decoded is not None and len(list(cache.glob("decoded-*/images.npy"))) == 2  # train+val share one
    rows = torch.tensor([5, 0, 40, 5])
    files = [x.dataset.samples[int(x.indices[r])][0] for r in rows]
    expected = torch.stack([_decode_file(f) for f in files])
    assert torch.equal(x[rows], expected) and x[rows].dtype == torch.uint8
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    batches = list(pickle.loads(pickle.dumps(x)).batches(order, 16))  # as an actor gets it: no open map travels
    assert torch.equal(torch.cat([b for _, b in batches]), torch.stack(
        [_decode_file(x.dataset.samples[int(x.indices[r])][0]) for r in order]))

    write_png(torch.full((1, 8, 8), 7, dtype=torch.uint8), files[0])  # edit one image: a new array, not a stale one
    again = load_dataset("imagefolder", str(folder), val_size=0.25, in_memory=False, decoded_cache=str(cache))
    assert again.train.x.decoded != x.decoded and len(list(cache.glob("decoded-*/images.npy"))) == 3
    assert int(again.train.x[rows[:1]].max()) == 7


def test_images_of_different_sizes_are_refused_at_load_time(folder, tmp_path):
    write_png(torch.zeros((1, 9, 9), dtype=torch.uint8), str(folder / "train" / "b" / "odd.png"))
    with pytest.raises(DataError, match=r"^data.root: .*train/b/odd\.png is 9x9 L.*first training image"):
        load_dataset("imagefolder", str(folder), val_size=0.25, in_memory=False, decoded_cache=str(tmp_path / "d"))


def test_bad_image_folders_are_one_line_errors(tmp_path, folder):
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset("imagefolder", str(tmp_path / "missing"))
    (folder / "train" / "d").mkdir()
    with pytest.raises(DataError, match="train.*d"):
        load_dataset("imagefolder", str(folder))
    (folder / "train" / "d").rmdir()
    (folder / "test" / "z").mkdir()
    write_png(torch.zeros(1, 8, 8, dtype=torch.uint8), str(folder / "test" / "z" / "0.png"))
    with pytest.raises(DataError, match=r"has classes \['z'\] that .*train lacks"):
        load_dataset("imagefolder", str(folder))


def test_an_unreadable_image_is_named(folder):
    broken = folder / "train" / "b" / "3.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"b/3\.png: cannot be read"):
        load_dataset("imagefolder", str(folder), in_memory=False)
