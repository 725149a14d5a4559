"""Teacher targets on disk: memory-mapped shards indexed by sample id, read a batch at a time, never loaded whole.

A folder holds ``meta.json`` and, per shard of ``rows_per_shard`` examples, either the dense targets
(``probs``, ``logits``: N x C) or the top-K ones (``indices``, ``log_probs``: N x K, ``rest``: N; with a sampled
tail also ``rest_samples``: N x S, ``rest_entropy``: N), as ``.npy`` files
that :func:`numpy.load` maps read-only. The folder is written once under a temporary name and renamed when
complete, so a reader never sees half a cache; its name is a hash of everything that defines the targets (the
teacher's weights, T, K, S, the data), so a changed setting can never reuse it.

Under a storage URI output_dir (:mod:`ensemble.base.storage`) the shards are uploaded before ``meta.json``, which
marks the folder complete in the store too; a reader on another node downloads the folder once into its node's
mirror (its name fixes its content) and maps it there.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ensemble.base import storage
from ensemble.base.errors import DistillError, NodeLost
from ensemble.base.records import (
    has_fields,
    read_json,
    report_damaged,
    write_json,
    writing,
)
from ensemble.cluster.restarts import LOST, is_lost
from ensemble.data.registry import from_numpy, to_numpy
from ensemble.data.rows import as_input
from ensemble.data.streaming import in_order
from ensemble.training.teacher import TeacherOutputs

from .topk import TopK, TopKOutputs, top_k

DENSE = ("probs", "logits")
TOPK = ("indices", "log_probs", "rest")
TAIL = ("rest_samples", "rest_entropy")


class ShardedTargets:
    """``targets[rows]`` -> :class:`TeacherOutputs` for those sample ids (dense, or :class:`TopKOutputs`)."""

    def __init__(self, folder: str | Path, meta: dict | None = None):
        self.folder = Path(folder)
        self.meta = meta if meta is not None else json.loads((self.folder / "meta.json").read_text())
        self._shards: list[dict[str, np.ndarray]] | None = None

    def __getstate__(self):  # an actor reopens the maps itself; only the folder (and its URI, if stored) travels
        return {"folder": self.folder, "meta": self.meta, "_shards": None, "_uri": storage.portable(self.folder)}

    def _here(self) -> Path:
        """The folder on this node: the one given, or this node's copy of it from the store."""
        uri = getattr(self, "_uri", None)
        if (self.folder / "meta.json").is_file() or not storage.is_uri(uri):
            return self.folder
        self.folder, self._uri = storage.localize(uri), None
        if not (self.folder / "meta.json").is_file():
            storage.pull(self.folder)
        return self.folder

    def __len__(self) -> int:
        return self.meta["rows"]

    @property
    def top_k(self) -> int | None:
        return self.meta["top_k"]

    @property
    def names(self) -> tuple[str, ...]:
        if not self.top_k:
            return DENSE
        return TOPK + (TAIL if self.meta.get("rest_samples") else ())

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in self.folder.glob("*.npy"))

    def _open(self) -> list[dict[str, np.ndarray]]:
        if self._shards is None:
            folder = self._here()
            self._shards = [{name: np.load(folder / f"{shard:05d}_{name}.npy", mmap_mode="r")
                             for name in self.names}
                            for shard in range(self.meta["shards"])]
        return self._shards

    def __getitem__(self, rows: torch.Tensor) -> TeacherOutputs:
        rows = rows.cpu().numpy()
        per = self.meta["rows_per_shard"]
        shards, offsets = rows // per, rows % per
        arrays = {}
        for name in self.names:
            out = None
            for shard in np.unique(shards):
                part = self._open()[shard][name]
                picked = part[offsets[shards == shard]]
                if out is None:
                    out = np.empty((len(rows), *picked.shape[1:]), dtype=picked.dtype)
                out[shards == shard] = picked
            arrays[name] = torch.from_numpy(out)
        if self.top_k:
            tail = (arrays["rest_samples"].long(), arrays["rest_entropy"].float()) if "rest_samples" in arrays else ()
            top = TopK(arrays["indices"].long(), arrays["log_probs"].float(), arrays["rest"].float(), *tail)
            return TopKOutputs(top=top)
        return TeacherOutputs(arrays["probs"].float(), arrays["logits"].float())


META_FIELDS = {"rows": int, "rows_per_shard": int, "shards": int, "top_k": (int, type(None))}
REBUILD = "the teacher's targets are computed again"


def reuse_targets(folder: str | Path) -> ShardedTargets | None:
    """The complete cache in ``folder``, or ``None``: missing, or damaged (an unreadable ``meta.json``, a shard
    missing or truncated), in which case it is reported, removed and so rebuilt by the caller."""
    folder = Path(folder)
    if storage.exists_remotely(folder / "meta.json") and not (folder / "meta.json").is_file():
        storage.pull(folder)  # complete in the store: this node's first use of it
    if not folder.exists():
        return None
    meta = read_json(folder / "meta.json", REBUILD, valid=lambda v: has_fields(v, **META_FIELDS))
    if meta is None:  # a damaged meta.json is reported by read_json itself
        if not (folder / "meta.json").exists():
            report_damaged(folder, "its meta.json is missing", REBUILD)
    else:
        targets = ShardedTargets(folder, meta)
        damage = _shard_damage(targets)
        if damage is None:
            if storage.exists_remotely(folder / "meta.json") is False:
                storage.push_tree(folder)  # kept here but gone from the store: other nodes read it there
            return targets
        report_damaged(folder, damage, REBUILD)
    storage.remove_tree(folder)
    return None


def _shard_damage(targets: ShardedTargets) -> str | None:
    """What is wrong with the shards ``meta.json`` lists (each opened as a map: nothing is read), or ``None``."""
    meta, per = targets.meta, targets.meta["rows_per_shard"]
    if per <= 0 or meta["shards"] != -(-meta["rows"] // per):
        return f"meta.json lists {meta['shards']} shards of {per} rows for {meta['rows']} rows"
    for shard in range(meta["shards"]):
        for name in targets.names:
            path = targets.folder / f"{shard:05d}_{name}.npy"
            try:
                length = len(np.load(path, mmap_mode="r", allow_pickle=False))
            except (OSError, ValueError, EOFError) as err:
                return f"{path.name}: {err}"
            if length != min(per, meta["rows"] - shard * per):
                return f"{path.name} holds {length} rows"
    return None


def write_targets(folder: str | Path, batches: Iterable[TeacherOutputs], rows: int, top: int | None = None,
                  rows_per_shard: int = 65536, rest_samples: int = 0) -> ShardedTargets:
    """Write the teacher's targets for ``rows`` examples, batch by batch, as shards; returns the reader."""
    folder = Path(folder)
    existing = reuse_targets(folder)
    if existing is not None:
        return existing
    partial = _partial_folder(folder)
    try:
        return _write_shards(partial, folder, batches, rows, top, rows_per_shard, rest_samples)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # a full disk, say: leave no half cache taking its space
        raise


def _write_shards(partial: Path, folder: Path, batches: Iterable[TeacherOutputs], rows: int, top: int | None,
                  rows_per_shard: int, rest_samples: int) -> ShardedTargets:
    buffers: dict[str, list[np.ndarray]] = {}
    written, shard = 0, 0
    for batch in batches:
        parts = _arrays(batch, top, rest_samples, written)
        for name, array in parts.items():
            buffers.setdefault(name, []).append(array)
        written += len(next(iter(parts.values())))
        while sum(len(a) for a in next(iter(buffers.values()))) >= rows_per_shard:
            shard = _flush(partial, buffers, shard, rows_per_shard)
    if written != rows:
        raise ValueError(f"teacher cache: wrote {written} rows, expected {rows}")
    if buffers and sum(len(a) for a in next(iter(buffers.values()))):
        shard = _flush(partial, buffers, shard, rows_per_shard)
    return _complete(partial, folder, {"rows": rows, "rows_per_shard": rows_per_shard, "shards": shard, "top_k": top,
                                       "rest_samples": rest_samples})


def _partial_folder(folder: Path) -> Path:
    partial = folder.with_name(f".{folder.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with writing(partial):
        partial.mkdir(parents=True)
    return partial


def _complete(partial: Path, folder: Path, meta: dict) -> ShardedTargets:
    """Write ``meta.json`` last, then rename the folder into place: readers see a whole cache or none."""
    write_json(partial / "meta.json", meta)
    try:
        partial.rename(folder)
    except OSError:  # another process finished the same cache first: theirs is identical
        shutil.rmtree(partial, ignore_errors=True)
        return ShardedTargets(folder)
    storage.push_tree(folder)  # meta.json last: complete in the store only once every shard is there
    return ShardedTargets(folder)


def _arrays(batch: TeacherOutputs, top: int | None, rest_samples: int = 0, first_row: int = 0) -> dict[str, np.ndarray]:
    if top:
        targets = top_k(batch.probs, top, rest_samples, first_row)
        arrays = {"indices": targets.indices.to(torch.int32).numpy(), "log_probs": targets.log_probs.numpy(),
                  "rest": targets.rest_log_mass.numpy()}
        if rest_samples:
            arrays.update(rest_samples=targets.rest_samples.to(torch.int32).numpy(),
                          rest_entropy=targets.rest_entropy.numpy())
        return arrays
    return {"probs": batch.probs.numpy(), "logits": batch.logits.numpy()}


def _flush(folder: Path, buffers: dict[str, list[np.ndarray]], shard: int, rows_per_shard: int) -> int:
    for name, arrays in buffers.items():
        joined = np.concatenate([a for a in arrays if len(a)]) if arrays else np.empty(0)
        _save(folder / f"{shard:05d}_{name}.npy", joined[:rows_per_shard])
        buffers[name] = [joined[rows_per_shard:]]
    return shard + 1


def write_targets_on_ray(folder: str | Path, teacher, splits: list, temperature: float, top: int | None = None,
                         rows_per_shard: int = 65536, num_cpus: float = 1, rest_samples: int = 0,
                         max_restarts: int = 3) -> ShardedTargets:
    """The same shards as :func:`write_targets`, each computed and written by its own Ray task; a task lost with
    its node runs again elsewhere, up to ``max_restarts`` times (``ray.max_restarts``).

    Plain Ray tasks rather than Ray Data: the rows are addressed by sample id and the splits (in-memory arrays in
    the object store, or streamed file lists) already travel to workers as they are; a shard is a contiguous range
    of ids, so each task knows where its rows go without a shuffle or a sort.
    """
    import ray


    folder = Path(folder)
    existing = reuse_targets(folder)
    if existing is not None:
        return existing
    partial = _partial_folder(folder)
    # A task on another node cannot write this node's folder: in the store's folder it writes its shards itself.
    stored = storage.portable(folder) if storage.locate(folder) else None
    total = sum(len(s) for s in splits)
    teacher_ref, data_ref = ray.put(teacher), ray.put([to_numpy(s) for s in splits])
    task = _shard_task.options(num_cpus=num_cpus, max_retries=max_restarts)
    try:
        _get(ray, max_restarts, [task.remote(teacher_ref, data_ref, start, min(start + rows_per_shard, total),
                                             temperature, top, rest_samples, stored or str(partial), shard)
                                 for shard, start in enumerate(range(0, total, rows_per_shard))])
        if stored:
            storage.pull(folder)
            for path in folder.glob("*.npy"):
                os.replace(path, partial / path.name)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return _complete(partial, folder, {"rows": total, "rows_per_shard": rows_per_shard,
                                       "shards": -(-total // rows_per_shard), "top_k": top,
                                       "rest_samples": rest_samples})


def _shard_task_body(teacher, data, start: int, stop: int, temperature: float, top: int | None, rest_samples: int,
                     folder: str, shard: int) -> None:
    """Rows ``start..stop`` of the splits joined end to end, through the teacher, saved as shard ``shard``."""

    parts, offset = [], 0
    for split in (from_numpy(d) for d in data):
        lo, hi = max(start, offset), min(stop, offset + len(split))
        if lo < hi:
            row = lo
            for inputs in in_order(split.x, 4096, lo - offset, hi - offset):
                with torch.no_grad():
                    parts.append(_arrays(teacher(as_input(inputs), temperature), top, rest_samples, row))
                row += len(inputs)
        offset += len(split)
    for name in parts[0]:
        _save(storage.localize(folder) / f"{shard:05d}_{name}.npy", np.concatenate([p[name] for p in parts]))


def _save(path: Path, array: np.ndarray) -> None:
    """One shard file; uploaded at once when it is in a mirror of the store (a Ray task's), not when partial."""
    with writing(path):
        np.save(path, array)
    storage.push(path)


def _get(ray, max_restarts: int, refs: list):
    """``ray.get``, with a task's own one-line error (a full disk, say) raised as itself, not as a remote traceback,
    and a task lost with its node more often than Ray's retries allow as one line too."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as err:
        if isinstance(getattr(err, "cause", None), DistillError):
            raise err.cause from None
        raise
    except LOST as err:
        if not is_lost(err):
            raise
        raise NodeLost(f"student.cache: a teacher-target shard task was lost with its node ({type(err).__name__}) "
                       f"and ray.max_restarts={max_restarts} retries are used up; check the cluster's nodes "
                       "(ray status), then rerun to resume, or raise ray.max_restarts") from None


def _remote(fn):
    import ray

    return ray.remote(fn)


_shard_task = _remote(_shard_task_body)
