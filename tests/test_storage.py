"""Storage: a full disk is one line and exit 2 with nothing finished lost and no partial file left as if complete;
a damaged record read back from a run folder (a teacher cache here; model folders in test_generated_bad_input.py)
costs a rebuild, with one warning naming it, never the run."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from servers import run_distill

from distill.cli import main
from ensemble.base.checkpoint import load_verified
from ensemble.training.teacher import TeacherOutputs

ONE_EPOCH = ["--set", "ensemble.train.epochs=1", "--set", "generalist.enabled=false", "--no-progress"]


def _members(out: Path) -> list[Path]:
    return sorted((out / "ensemble").glob("member_*"))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}


def _nothing_partial(out: Path) -> None:
    """No temporary file left, and every file that looks complete (a model's result, its weights, a checkpoint) is."""
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], "a temporary file was left"
    for member in _members(out):
        if (member / "result.json").is_file():
            json.loads((member / "result.json").read_text())
            assert load_verified(member / "model.pt") is not None and load_verified(member / "logits.pt") is not None
        for checkpoint in (member / "checkpoints").glob("epoch_*.pt"):
            assert load_verified(checkpoint) is not None, f"{checkpoint} is there but not whole"


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs: room for one finished digits member (about 0.55 MB), not for three."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                             text=True, check=False) if os.geteuid() == 0 else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() if mounted else 'not root'})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)


def test_a_full_disk_is_one_line_exit_2_keeps_what_finished_and_the_rerun_resumes(ray_cpu, small_disk, tmp_path):
    import ray

    out, uri = small_disk / "out", f"sqlite:///{tmp_path}/mlflow.db"
    args = ["ensemble", "--output-dir", str(out), "--tracking-uri", uri, *ONE_EPOCH]
    assert main([*args, "--set", "ensemble.members=1"]) == 0
    first = _members(out)[0]
    finished = _files(first)

    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
           "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    # Not the 30 s of bad input: the disk fills while models train. The limit only guards against a hang.
    done, _ = run_distill([*args, "--set", "ensemble.members=3"], 180, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}/ensemble/member_"), lines
    assert "the disk is full (No space left on device)" in lines[0] and "Traceback" not in done.stderr
    assert {k: v for k, v in _files(first).items() if k != "mlflow.json"} == \
        {k: v for k, v in finished.items() if k != "mlflow.json"}, "the finished member was changed"
    _nothing_partial(out)

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    assert main([*args, "--set", "ensemble.members=3"]) == 0
    members = json.loads((out / "results.json").read_text())["ensemble"]["members"]
    assert [m["reused"] for m in members] == [True, False, False]
    assert all(m["epochs_trained"] == 1 for m in members)
    _nothing_partial(out)


# The Python API in a process of its own whose files may not pass 200 kB (RLIMIT_FSIZE: EFBIG, like a full disk):
# a one-member ensemble (0.1 MB files) finishes first, then a member's 0.33 MB checkpoint cannot be written.
FILE_LIMIT_SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    import numpy as np
    from sklearn.datasets import load_digits
    from ensemble import Ensemble
    from ensemble.base.errors import StorageError
    from ensemble.models.registry import RegisteredModel

    digits = load_digits()
    x, y = (digits.data / 16).astype(np.float32), digits.target
    train, val = (x[:1000], y[:1000]), (x[1000:1300], y[1000:1300])
    factory = RegisteredModel("mlp", (64,), 10, {"hidden": [128, 128]})
    fit = lambda n: Ensemble(factory, {"members": n, "train": {"epochs": 1}}, output_dir=sys.argv[1],
                             in_process=True).fit(train, val)
    fit(1)
    print("FIRST DONE", flush=True)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process instead of failing the write
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
    try:
        fit(2)
    except StorageError as err:
        print("STORAGE", err)
""")


def test_a_write_past_the_file_size_limit_is_a_storage_error_and_keeps_what_finished(tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "limit.py"
    script.write_text(FILE_LIMIT_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(out / "ensemble")], capture_output=True, text=True,
                          timeout=120, check=False)
    assert "FIRST DONE" in done.stdout, done.stderr[-3000:]
    first = _members(out)[0]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("STORAGE")]
    assert len(lines) == 1, done.stdout + done.stderr[-3000:]
    assert lines[0].startswith(f"STORAGE {out}/ensemble/member_1-"), lines[0]
    assert "epoch_0001.pt would pass the file size limit (File too large)" in lines[0], lines[0]
    assert load_verified(first / "model.pt") is not None and json.loads((first / "result.json").read_text())
    _nothing_partial(out)


def _targets(n: int, seed: int) -> list[TeacherOutputs]:
    logits = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    return [TeacherOutputs(torch.softmax(logits, 1), logits)]


@pytest.mark.parametrize("damage", ["meta.json truncated", "meta.json not UTF-8", "a shard truncated",
                                    "a shard missing", "meta.json missing"])
def test_a_damaged_teacher_cache_is_rebuilt_with_one_warning(damage, tmp_path, caplog):
    from distill.cache import write_targets

    folder = tmp_path / "cache"
    write_targets(folder, _targets(10, 0), 10, rows_per_shard=4)  # shards of 4, 4 and 2 rows
    meta, shard = folder / "meta.json", folder / "00001_probs.npy"
    if damage == "meta.json truncated":
        meta.write_bytes(meta.read_bytes()[:12])
    elif damage == "meta.json not UTF-8":
        meta.write_bytes(b"\xff\xfe" + meta.read_bytes())
    elif damage == "a shard truncated":
        shard.write_bytes(shard.read_bytes()[:-9])
    elif damage == "a shard missing":
        shard.unlink()
    else:
        meta.unlink()
    with caplog.at_level(logging.WARNING):
        targets = write_targets(folder, _targets(10, 1), 10, rows_per_shard=4)  # the rebuild's own targets
    expected = _targets(10, 1)[0]
    rows = torch.arange(10)
    assert torch.equal(targets[rows].probs, expected.probs) and torch.equal(targets[rows].logits, expected.logits)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "is unreadable" in warnings[0] and "computed again" in warnings[0], warnings
    assert str(folder) in warnings[0]
    assert np.load(folder / "00002_logits.npy").shape == (2, 4)


def test_a_truncated_decoded_image_cache_is_decoded_again_with_one_warning_each(tmp_path, caplog):
    from torchvision.io import write_png

    from ensemble.data.registry import load_dataset

    for part, count in (("train", 8), ("test", 2)):
        for c in range(2):
            (tmp_path / "images" / part / f"class{c}").mkdir(parents=True)
            for i in range(count):
                write_png(torch.full((1, 8, 8), 10 * c + i, dtype=torch.uint8),
                          str(tmp_path / "images" / part / f"class{c}" / f"{i}.png"))
    def load():
        return load_dataset("imagefolder", str(tmp_path / "images"), val_size=0.25, in_memory=False,
                            decoded_cache=str(tmp_path / "decoded"))
    first = load()
    arrays = sorted((tmp_path / "decoded").glob("decoded-*/images.npy"))
    assert len(arrays) == 2  # train and val share one, test has its own
    for array in arrays:
        array.write_bytes(array.read_bytes()[:-100])
    with caplog.at_level(logging.WARNING):
        again = load()
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert [w.split(" is unreadable")[0] for w in warnings] == [str(a) for a in arrays], warnings
    assert all("decoded again" in w for w in warnings)
    rows = torch.arange(len(first.train))
    assert torch.equal(again.train.x[rows], first.train.x[rows])
    assert sorted(int(v) for v in again.test.x[torch.arange(4)].amax(dim=(1, 2, 3))) == [0, 1, 10, 11]
