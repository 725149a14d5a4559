"""MLflow stores at the boundary: one line for a store that cannot be used, and one process at a time creating a
new SQLite store's schema.

MLflow reports a damaged or half-created store as a SQLAlchemy error several hundred lines long, and the same
exception types carry plain bugs; :func:`store_error` picks out the errors that are about the store itself (its
file, its schema, its server) and says which store and what to do, once, where :class:`ensemble.track.tracking.Tracker`
meets MLflow. Everything else is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ensemble.base.errors import DistillError
from ensemble.base.lock import FolderLock

SCHEMA_LOCK_WAIT = 120.0  # a new store's full migration takes seconds; minutes only on a badly overloaded disk

# "(sqlite3.OperationalError) no such table: runs [SQL: ...]" -> "no such table: runs"
_DRIVER_REASON = re.compile(r"\((?:sqlite3|psycopg2?|pymysql|MySQLdb)\.[\w.]+\)\s*([^\[\n]+)")
# Reasons that mean the store's schema (or file) is not one MLflow can use: repair it or start a new one.
_UNUSABLE = ("no such table", "no such column", "has no column", "file is not a database", "malformed",
             "out-of-date database schema", "online migration", "already exists", "duplicate column", "undefined table",
             "undefined column", "doesn't exist", "unknown column")
FORMAT_ADVICE = "expected sqlite:///PATH.db, a folder or http://HOST:PORT"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for any other store, or an in-memory one)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


@contextmanager
def schema_lock(uri: str, wait: float = SCHEMA_LOCK_WAIT) -> Iterator[None]:
    """Hold an exclusive lock on ``<db>.lock`` beside a SQLite store (:class:`ensemble.base.lock.FolderLock`) while the
    block first opens it.

    MLflow creates and migrates a new store's schema when a process first opens it; two processes doing so at once
    collide ("table ... already exists", "duplicate column name") and may leave it half-migrated. The kernel drops
    the lock when its holder dies, so a killed process never blocks the next one. Other stores need no lock.
    """
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    lock = FolderLock(path.parent, f"creating the MLflow store {uri}", wait=wait, label="tracking.uri",
                      advice="wait for it, or use another store", lock_name=path.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except OSError:
        pass  # a folder this process cannot write, or a file system without locks: MLflow reports the store itself
    try:
        yield
    finally:
        lock.release()


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _driver_error(err: BaseException) -> bool:
    """A database driver's error (the store's file or server), not a constraint another process met first."""
    if "Integrity" in type(err).__name__:
        return False
    module = type(err).__module__
    if module.startswith("sqlalchemy"):
        from sqlalchemy.exc import DBAPIError

        return isinstance(err, DBAPIError)  # not ArgumentError: a malformed URI is a format error
    return module.startswith(("sqlite3", "psycopg", "pymysql", "MySQLdb"))


def store_reason(err: BaseException) -> str | None:
    """Why the store behind ``err`` cannot be used (``no such table: runs``), or None when ``err`` is not about
    the store (a bad argument, a bug): such errors are left to their callers."""
    for cause in _chain(err):
        text = " ".join(str(cause).split())
        if _driver_error(cause):
            found = _DRIVER_REASON.search(text)
            return (found.group(1) if found else text).strip().rstrip(".")
        if "out-of-date database schema" in text.lower() or "online migration" in text.lower():
            return text.split(". ")[0].rstrip(".")
        if text.startswith("API request to") and "failed with exception" in text:
            return "no answer: " + text.split("failed with exception", 1)[1].strip()[:200]
    return None


def _plain(reason: str) -> str:
    """``no such table: runs`` -> ``no table 'runs'``: what is missing, in the user's words."""
    found = re.match(r"no such (table|column): (\S+)", reason)
    return f"no {found.group(1)} '{found.group(2)}'" if found else reason


def store_error(uri: str, err: BaseException) -> DistillError | None:
    """The one-line error for a store that cannot be used, or None when ``err`` is not about the store."""
    reason = store_reason(err)
    if reason is None:
        return None
    if any(word in reason.lower() for word in _UNUSABLE):
        return unusable(uri, _plain(reason))
    if "locked" in reason.lower():
        return DistillError(f"tracking.uri: {uri} stayed locked by another process ({reason}); retry when it is "
                            "done, or use another store")
    return DistillError(f"tracking.uri: the MLflow store {uri} failed ({reason}); check that it is readable and "
                        "writable, or point --tracking-uri at another store")


def unusable(uri: str, reason: str) -> DistillError:
    return DistillError(f"tracking.uri: {uri} is not a usable MLflow store ({reason}); point --tracking-uri at a new "
                        "file or repair it (`mlflow db upgrade` migrates an old one)")


def check_schema(uri: str, shown: str) -> None:
    """Refuse a SQLite store that lacks a table or column this MLflow uses (dropped by hand, or half-created by a
    killed process) when it is opened, before any run starts, rather than at the first write that needs it, which
    may come after training. MLflow's own check on opening only creates missing tables, from its first schema."""
    path = sqlite_path(uri)
    if path is None:
        return
    try:
        import mlflow.store.model_registry.dbmodels.models  # noqa: F401 - the registry's tables, in the same file
        import mlflow.store.tracking.dbmodels.models  # noqa: F401
        import sqlalchemy
        from mlflow.store.db.base_sql_model import Base  # the tables of every MLflow store module imported
    except ImportError:  # another MLflow layout: its own errors will do
        return
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        inspector = sqlalchemy.inspect(engine)
        present = set(inspector.get_table_names())
        for name, table in sorted(Base.metadata.tables.items()):
            if name not in present:
                raise unusable(shown, f"no table {name!r}")
            columns = {column["name"] for column in inspector.get_columns(name)}
            missing = [column.name for column in table.columns if column.name not in columns]
            if missing:
                raise unusable(shown, f"no column '{name}.{missing[0]}'")
    finally:
        engine.dispose()


@contextmanager
def store_errors(uri: str) -> Iterator[None]:
    """Errors of the store ``uri`` raised in the block become their one line; all others pass unchanged."""
    try:
        yield
    except DistillError:
        raise
    except Exception as err:  # noqa: BLE001 - MLflow raises its own, SQLAlchemy's and requests' types
        wrapped = store_error(uri, err)
        if wrapped is None:
            raise
        raise wrapped from None


def open_error(uri: str, err: BaseException) -> DistillError:
    """Why MLflow cannot open ``uri`` at all: its format (then what the format must be), the store, or else."""
    wrapped = store_error(uri, err)
    if wrapped is not None:
        return wrapped
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, ModuleNotFoundError):
        return DistillError(f"tracking.uri: {uri} needs the Python package that provides {err.name!r}; install it "
                            "or use sqlite:///PATH.db")
    name = type(err).__name__
    if name in ("ArgumentError", "UnsupportedModelRegistryStoreURIException") or "unsupported uri" in text.lower():
        return DistillError(f"tracking.uri: MLflow cannot use {uri!r} ({text.split('. ')[0].rstrip('.')}); "
                            f"{FORMAT_ADVICE}")
    return DistillError(f"tracking.uri: MLflow cannot use {uri!r} ({text.split('. ')[0].rstrip('.')})")


def missing_experiment(uri: str, experiment_id: str) -> DistillError:
    return DistillError(
        f"tracking: experiment id {experiment_id} does not exist in {uri} (from MLFLOW_EXPERIMENT_ID); list that "
        f"store's experiments with `MLFLOW_TRACKING_URI={uri} mlflow experiments search`, or unset it and name one "
        "with experiment= or MLFLOW_EXPERIMENT_NAME (made when missing)")


def deleted_experiment(uri: str, name: str, experiment_id: str) -> DistillError:
    return DistillError(
        f"tracking.experiment: experiment {name!r} (id {experiment_id}) is deleted in {uri}; restore it with "
        f"`MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id {experiment_id}`, or name another")
