"""Checkpoints written atomically with a SHA-256 sidecar; a corrupt or truncated file is detected and skipped."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from ensemble.base import storage
from ensemble.base.errors import ConfigError
from ensemble.base.records import read_bytes, report_damaged, write_atomic, write_text


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_verified(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary name, its checksum beside it, then renamed into place: a crash or a full disk
    never leaves a half file under the real name (a checksum without its new file reads as a corrupt file)."""
    path = Path(path)
    write_atomic(path, lambda fh: torch.save(obj, fh), lambda tmp: write_text(sidecar(path), _sha256(tmp)))


def load_verified(path: Path, then: str = "ignoring it") -> Any | None:
    """Load with ``weights_only=True`` if the checksum matches; ``None`` when the file is missing, or damaged (a
    missing or wrong checksum, unreadable): that is reported once, saying ``then`` (what happens instead)."""
    path = Path(path)
    if not path.exists():
        return None
    expected = read_bytes(sidecar(path), then)
    if not path.is_file() or expected is None:
        report_damaged(path, "not a file" if not path.is_file() else "its checksum file is missing", then)
        return None
    if _sha256(path) != expected.decode("ascii", "replace").strip():
        report_damaged(path, "it fails its checksum", then)
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - an unreadable file is treated like a corrupt one
        report_damaged(path, " ".join(f"{type(err).__name__}: {err}".split())[:200], then)
        return None


class CheckpointDir:
    """``epoch_0003.pt`` files (plus sidecars) for one model; keeps the newest ``keep`` of them."""

    def __init__(self, root: Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def _epochs(self) -> list[Path]:
        return sorted(self.root.glob("epoch_*.pt"))

    def save(self, epoch: int, state: dict) -> Path:
        path = self.root / f"epoch_{epoch:04d}.pt"
        save_verified(state, path)
        for old in self._epochs()[: -self.keep]:
            storage.remove(old)
            storage.remove(sidecar(old))
        return path

    def latest(self) -> dict | None:
        """The newest checkpoint that passes its checksum; older ones are the fallback for a corrupt newest."""
        for path in reversed(self._epochs()):
            state = load_verified(path, "falling back to an older checkpoint, or to training from the start")
            if state is not None:
                return state
        return None


def make_output_dir(path: str | Path, key: str = "output_dir") -> Path:
    """Create the output folder, or say in one line why it cannot be (a file of that name, no permission); for a
    storage URI, the node-local mirror this process works in (:mod:`ensemble.base.storage`)."""
    if storage.is_uri(path):
        return storage.localize(path, key)
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{key}: {path} exists and is not a folder; choose another --output-dir") from None
    except OSError as err:
        raise ConfigError(f"{key}: cannot create the folder {path} ({err.strerror}); "
                          "choose another --output-dir") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}: the folder {path} is not writable; choose another --output-dir")
    return path


def _tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype (numpy has no bfloat16, so they are read as uint8)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.element_size() else b""


def state_fingerprint(state: dict) -> str:
    """A short hash of a state dict's names and values (e.g. the weights a specialist starts from)."""
    digest = hashlib.blake2b(digest_size=8)
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        if isinstance(tensor, torch.Tensor) and not torch.nn.parameter.is_lazy(tensor):
            digest.update(_tensor_bytes(tensor))
        else:  # a module's extra state, or a lazy parameter not yet shaped
            digest.update(repr(tensor).encode())
    return digest.hexdigest()


def tensor_fingerprint(tensor: torch.Tensor) -> str:
    """A short hash of a whole tensor: its dtype, shape and every value (never a prefix or a size)."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
    digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()
