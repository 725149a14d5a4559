"""Where a run's files live: a local folder, or object storage (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``)
reached through :mod:`pyarrow.fs`, with node-local disk only as a cache (a *mirror*).

A URI ``output_dir`` (its options in the query string as pyarrow takes them, e.g.
``s3://bucket/run?endpoint_override=host:9000&scheme=http&region=eu-west-1``) is mirrored, in every process that
uses it, by a folder under ``$RAY_DISTILL_CACHE`` (default ``~/.cache/ray-distill``) named by a hash of the URI;
its ``.storage.json`` names the URI. The project keeps working with paths: each write lands in the mirror first
(atomically, :mod:`ensemble.base.records`) and :func:`push` then uploads it whole; a reader first :func:`pull`\\ s
what it reads. A process on another node is handed :func:`portable` (the folder's URI) and opens its own mirror
with :func:`localize`.

Guarantees:

* An object is written by one PUT of the complete file, after the local write succeeded: a reader never sees half a
  file (S3, GCS and Azure replace an object atomically; on HDFS a reader may see a file being written).
* A folder's records are uploaded after its data (``*.json`` last: ``result.json``, ``meta.json``), so a reader that
  finds the record finds the data it describes; a checkpoint's ``.sha256`` sidecar is checked on load as locally.
* :func:`pull` makes the local copy of the named files (or of a whole folder) equal to the remote one, deleting
  local files the remote does not have: a stale cache never passes for a finished model.
* Names starting with ``.`` (locks, ``.partial`` folders, the marker) stay node-local and are never uploaded.
* Not guaranteed: two writers of one object (the locks of :mod:`ensemble.base.lock` exist to prevent them); files
  written by anything but this module (MLflow's artifacts go to MLflow's own store).

An unsupported scheme or an unreachable store is one :class:`ConfigError` line naming ``output_dir``, within
seconds: S3 connects with a 5 s connect timeout, a 10 s request timeout and two attempts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble.base.errors import ConfigError, StorageError

URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SCHEMES = ("s3", "gs", "gcs", "abfs", "abfss", "hdfs", "viewfs")
MARKER = ".storage.json"
CACHE_ENV = "RAY_DISTILL_CACHE"
CONNECT_TIMEOUT, REQUEST_TIMEOUT, ATTEMPTS = 5.0, 10.0, 2

_remotes: dict[str, "Remote"] = {}  # root URI -> its opened file system, per process (opening costs a round trip)


@dataclass(frozen=True)
class Remote:
    uri: str  # as given, options included
    fs: Any  # a pyarrow.fs.FileSystem
    path: str  # the root inside ``fs`` ("bucket/run")

    def join(self, relative: str) -> str:
        return f"{self.path.rstrip('/')}/{relative}" if relative else self.path

    def uri_of(self, relative: str) -> str:
        base, sep, query = self.uri.partition("?")
        return f"{base.rstrip('/')}/{relative}{sep}{query}" if relative else self.uri

    @property
    def is_s3(self) -> bool:
        return self.fs.type_name == "s3"


def is_uri(value: str | Path) -> bool:
    return isinstance(value, str) and URI.match(value) is not None


def scheme_error(value: str, key: str = "output_dir") -> str | None:
    """Why ``value`` cannot be a storage URI (its scheme), or ``None``; the config's validator says it."""
    match = URI.match(value)
    if match and match.group(1).lower() not in SCHEMES:
        return (f"{match.group(1)}:// is not a storage this library writes to; give a local path or a URI of "
                f"{', '.join(s + '://' for s in SCHEMES)}")
    return None


def connect(uri: str, key: str = "output_dir") -> Remote:
    """The file system of ``uri``, checked to answer (once per process): else one :class:`ConfigError` line."""
    if uri in _remotes:
        return _remotes[uri]
    import pyarrow.fs as pafs

    reason = scheme_error(uri, key)
    if reason:
        raise ConfigError(f"{key}: {reason}")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        if fs.type_name == "s3":
            # from_uri takes the options of the query string; the timeouts and retries are ours, so that a store
            # that does not answer is an error within seconds, not minutes of the SDK's retries.
            options = fs.__reduce__()[1][0]
            fs = pafs.S3FileSystem(**{**options, "connect_timeout": CONNECT_TIMEOUT,
                                      "request_timeout": REQUEST_TIMEOUT,
                                      "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS)})
        top = path.split("/")[0] if fs.type_name == "s3" else path
        found = fs.get_file_info(top)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"{key}: cannot open {redact(uri)} ({_one_line(err)}); check the URI, its options "
                          "(endpoint_override, scheme, region) and the credentials") from None
    if fs.type_name == "s3" and found.type == pafs.FileType.NotFound:
        raise ConfigError(f"{key}: the bucket {top} of {redact(uri)} does not exist; create it first")
    remote = _remotes[uri] = Remote(uri, fs, path.rstrip("/"))
    return remote


def redact(uri: str) -> str:
    """The URI without the secrets it may carry (``s3://KEY:SECRET@bucket``, ``secret_key=...``)."""
    uri = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@?]*@", r"\1***@", uri)
    return re.sub(r"((?:secret|access|token|key|password)[A-Za-z_]*=)[^&]*", r"\1***", uri, flags=re.I)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ray-distill").expanduser()


def localize(ref: str | Path, key: str = "output_dir") -> Path:
    """The folder to work in for ``ref``: a local path as it is, or the node-local mirror of a URI."""
    if not is_uri(ref):
        return Path(ref)
    remote = connect(str(ref), key)
    root = cache_root() / hashlib.sha256(remote.uri.encode()).hexdigest()[:20]
    try:
        root.mkdir(parents=True, exist_ok=True)
        marker = root / MARKER
        if not marker.is_file():
            tmp = root / f"{MARKER}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps({"uri": remote.uri}))
            tmp.chmod(0o600)  # the URI may carry keys (s3://KEY:SECRET@bucket)
            os.replace(tmp, marker)
    except OSError as err:
        raise ConfigError(f"{key}: cannot create the local cache {root} of {redact(remote.uri)} "
                          f"({err.strerror}); set {CACHE_ENV} to a writable folder") from None
    return root


def locate(path: str | Path) -> tuple[Remote, str] | None:
    """``(remote, relative path)`` of a path inside a mirror, or ``None`` (a local path, or a node-local name)."""
    path = Path(os.path.abspath(path))
    for parent in (path, *path.parents):
        marker = parent / MARKER
        if marker.is_file():
            relative = path.relative_to(parent).parts
            if any(part.startswith(".") for part in relative):
                return None
            return connect(json.loads(marker.read_text())["uri"]), "/".join(relative)
    return None


def portable(path: str | Path) -> str:
    """What to hand another process, perhaps on another node: the URI of a mirrored path, else the path."""
    found = locate(path)
    return found[0].uri_of(found[1]) if found else str(path)


def push(path: str | Path) -> None:
    """Upload the local file ``path`` (just written whole) to its place in the store, if it is mirrored."""
    found = locate(path)
    if found is None:
        return
    remote, relative = found
    target = remote.join(relative)
    try:
        if not remote.is_s3:  # S3 has no folders; the others want the parent made
            remote.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        with open(path, "rb") as src, remote.fs.open_output_stream(target) as out:
            shutil.copyfileobj(src, out, 1 << 22)
    except OSError as err:
        raise StorageError(f"{redact(remote.uri_of(relative))}: cannot upload ({_one_line(err)}); check the store "
                           "and its credentials, then rerun: what was uploaded is kept") from None


def push_tree(folder: str | Path) -> None:
    """Upload every file under ``folder``, records (``*.json``) last."""
    for file in _records_last(p for p in Path(folder).rglob("*") if p.is_file()):
        push(file)


def remove(path: str | Path) -> None:
    """Delete a file here and, if mirrored, in the store."""
    Path(path).unlink(missing_ok=True)
    found = locate(path)
    if found is not None:
        try:
            found[0].fs.delete_file(found[0].join(found[1]))
        except (FileNotFoundError, OSError):
            pass  # already gone, or not deletable: an extra old checkpoint costs space, never correctness


def remove_tree(folder: str | Path) -> None:
    found = locate(folder)
    shutil.rmtree(folder, ignore_errors=True)
    if found is not None:
        try:
            found[0].fs.delete_dir(found[0].join(found[1]))
        except OSError:
            pass


def exists_remotely(path: str | Path) -> bool | None:
    """Whether a mirrored file is in the store (``None``: not mirrored)."""
    found = locate(path)
    if found is None:
        return None
    import pyarrow.fs as pafs

    return _info(found[0], found[0].join(found[1])).type == pafs.FileType.File


def pull(folder: str | Path, names: list[str] | None = None) -> None:
    """Make the local copies of ``folder``'s ``names`` (every file under it when ``None``) equal to the store's:
    downloaded whole, or deleted when the store has none. Nothing happens for a folder that is not mirrored."""
    found = locate(folder)
    if found is None:
        return
    import pyarrow.fs as pafs

    remote, relative = found
    base, folder = remote.join(relative), Path(folder)
    if names is not None:
        wanted = {name: _info(remote, f"{base}/{name}") for name in names}
        present = {name for name, info in wanted.items() if info.type == pafs.FileType.File}
    else:
        infos = _list(remote, base)
        present = {info.path[len(base) + 1:] for info in infos if info.type == pafs.FileType.File}
        present = {name for name in present if not any(part.startswith(".") for part in name.split("/"))}
        wanted = {str(p.relative_to(folder)): None for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts)}
    for name in set(wanted) - present:
        (folder / name).unlink(missing_ok=True)
    for name in _records_last(present):
        _download(remote, f"{base}/{name}", folder / name)


def _records_last(items) -> list:
    return sorted(items, key=lambda p: (str(p).endswith(".json"), str(p)))


def _info(remote: Remote, target: str):
    try:
        return remote.fs.get_file_info(target)
    except OSError as err:
        raise StorageError(f"{redact(remote.uri)}: cannot read {target} ({_one_line(err)})") from None


def _list(remote: Remote, base: str) -> list:
    import pyarrow.fs as pafs

    try:
        return remote.fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as err:
        raise StorageError(f"{redact(remote.uri)}: cannot list {base} ({_one_line(err)})") from None


def _download(remote: Remote, source: str, target: Path) -> None:
    """The object whole into ``target`` (through a temporary name: a local reader never sees half of it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.download")
    try:
        with remote.fs.open_input_stream(source) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 22)
        os.replace(tmp, target)
    except FileNotFoundError:
        tmp.unlink(missing_ok=True)
        target.unlink(missing_ok=True)  # deleted in between: absent, as in the store
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"{redact(remote.uri)}: cannot download {source} ({_one_line(err)})") from None
