"""What a run leaves on disk, written and read back by one rule.

Writing: each record is written whole under a temporary name and renamed into place, so a crash or a full disk
never leaves a partial file under the real name; a failed write removes its temporary file and is one
:class:`~ensemble.base.errors.StorageError` line naming the folder (the disk is full, or the file system said no).

Reading: a record that is missing is simply absent. One that is there but cannot be decoded (truncated, not UTF-8,
not JSON, not the fields this library writes) is treated as absent too, with one warning naming the file and what
happens instead: everything read back (results, cache metadata, checkpoints) can be recomputed, so a damaged record
costs a resume or a rebuild, never the run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from ensemble.base import storage
from ensemble.base.errors import StorageError

log = logging.getLogger(__name__)

# EFBIG: a file-size limit (ulimit -f, a quota on one file) stops the write just as a full disk does.
FULL_DISK = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})

_warned: set[tuple] = set()  # (path, size, mtime) already reported in this process: one warning per damaged file


def storage_error(path: Path, err: OSError) -> StorageError:
    """The one line for a write that failed: the folder, why, and what to do."""
    path = Path(path)
    rerun = "then rerun: finished models are kept and unfinished ones resume from their last checkpoint"
    if err.errno == errno.EFBIG:
        return StorageError(f"{path.parent}: {path.name} would pass the file size limit ({err.strerror}); raise "
                            f"the limit (ulimit -f) or choose another --output-dir, {rerun}")
    if err.errno in FULL_DISK:
        return StorageError(f"{path.parent}: the disk is full ({err.strerror}) while writing {path.name}; free "
                            f"space there or choose another --output-dir, {rerun}")
    return StorageError(f"{path}: cannot write ({err.strerror or err}); check that the folder is writable or "
                        "choose another --output-dir")


def _os_error_in(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err``, itself or in its chain: torch.save's C++ writer, failing on a full disk as it
    closes the file, raises a RuntimeError while the OSError is being handled."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError) and err.errno is not None:
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn an OSError raised while writing ``path`` (or one behind another error) into its one-line
    :class:`StorageError`."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        cause = _os_error_in(err)
        if cause is None:
            raise
        raise storage_error(Path(path), cause) from None


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None],
                 before_rename: Callable[[Path], None] | None = None) -> None:
    """``write(fh)`` into ``path.tmp``, ``before_rename(tmp)`` (say, its checksum), then rename it to ``path``; on
    any failure the temporary file is removed and whatever ``path`` held before is left as it was. A path in a
    mirror of object storage is then uploaded whole (:func:`ensemble.base.storage.push`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            # A Python file, not a path: torch.save to a path reports a full disk as a bare C++ RuntimeError,
            # through a file object it raises the OSError with its errno.
            with open(tmp, "wb") as fh:
                write(fh)
            if before_rename is not None:
                before_rename(tmp)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    storage.push(path)


def write_bytes(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda fh: fh.write(data))


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str))


def report_damaged(path: str | Path, reason: str, then: str) -> None:
    """One warning per damaged file (per version of it) and process: ``PATH is unreadable (REASON); THEN``."""
    path = Path(path)
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except OSError:
        key = (str(path), None, None)
    if key in _warned:
        return
    _warned.add(key)
    log.warning("%s is unreadable (%s); %s", path, reason, then)


def read_bytes(path: str | Path, then: str) -> bytes | None:
    """The file's bytes; ``None`` when it is missing, or is a folder or another non-file (reported)."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except (IsADirectoryError, NotADirectoryError) as err:
        report_damaged(path, err.strerror or "not a file", then)
        return None


def read_json(path: str | Path, then: str, valid: Callable[[Any], bool] | None = None) -> Any | None:
    """The JSON record at ``path``; ``None`` when missing, or when it is damaged (reported once, with ``then``):
    truncated, not UTF-8, not JSON, or (with ``valid``) not the shape this library writes."""
    raw = read_bytes(path, then)
    if raw is None:
        return None
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        report_damaged(path, "not UTF-8 text", then)
        return None
    except ValueError as err:
        report_damaged(path, f"{'empty' if not raw.strip() else 'not JSON'}: {err}", then)
        return None
    if valid is not None and not valid(value):
        report_damaged(path, "not the fields this library writes", then)
        return None
    return value


def has_fields(value: Any, **types: type | tuple[type, ...]) -> bool:
    """``value`` is a dict holding each named field with the given type(s)."""
    return isinstance(value, dict) and all(isinstance(value.get(name), kind) for name, kind in types.items())
