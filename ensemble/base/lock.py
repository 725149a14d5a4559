"""One process at a time per folder: an exclusive ``flock`` on ``<folder>/.lock``, held while the folder is written.

The lock belongs to an open file, so the kernel drops it when its process dies, however it dies (SIGKILL, the OOM
killer, a lost node's actor): a dead holder's lock is simply taken, with nothing to clean up or to guess from pids.
The file records who holds it (host, pid, since when, doing what), so a refused process can name the holder. The
file is never deleted: a process that had opened it just before would lock the unlinked file while the next one
locks a new file, and both would think they hold the folder.

A folder mirrored from object storage (:mod:`ensemble.base.storage`) is held across nodes too: besides the local
``flock``, a lease object in the store (:mod:`ensemble.base.lease`, which states what it guarantees on each store);
with ``refresh`` the folder's local copy is then made equal to the store's, so the holder reads what the last
holder wrote, wherever it ran.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path

from ensemble.base import storage
from ensemble.base.errors import FolderInUse
from ensemble.base.lease import Lease

LOCK_FILE = ".lock"
POLL_SECONDS = 0.5
# A model folder's holder is normally a live trainer of the same model in another process, but it may be the
# orphaned actor of a SIGKILLed driver, which stops at its next epoch boundary (``runner.TrainerActor.fit``); a
# minute covers an epoch of any model this library's configs train in a test or a rerun.
MODEL_FOLDER_WAIT = 60.0


class FolderLock:
    """``with FolderLock(folder, "distill run"):`` or :meth:`acquire` ... :meth:`release`; the folder must exist.

    wait: seconds to poll (every half second) while another process holds it; 0 refuses at once.
    label / advice: how the one-line :class:`FolderInUse` names the folder and what it asks the user to do.
    lock_name: the lock file's name in the folder (``.lock``; ``mlflow.db.lock`` guards a store beside it).
    Locks on different folders nest; the same folder twice, even in one process, is refused like any holder.
    """

    def __init__(self, folder: str | Path, purpose: str, *, wait: float = 0.0, label: str = "output_dir",
                 advice: str = "wait for it to finish or use another --output-dir", lock_name: str = LOCK_FILE,
                 refresh: bool = False):
        self.folder = Path(folder).resolve()
        self.refresh = refresh
        self._lease: Lease | None = None
        self.path = self.folder / lock_name
        self.purpose = purpose
        self.wait = wait
        self.label = label
        self.advice = advice
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this FolderLock is already held")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._take(fd)
            # Truncate and write through the locked descriptor: the file keeps its inode, so the lock stays valid.
            os.ftruncate(fd, 0)
            try:
                os.pwrite(fd, json.dumps(holder_info(self.purpose)).encode(), 0)
            except OSError:
                pass  # a full disk: the lock is held all the same; the run's first real write says what is wrong
            self._take_lease()
        except BaseException:
            os.close(fd)  # closing drops the lock too, if it was taken
            raise
        self._fd = fd
        return self

    def _take_lease(self) -> None:
        found = storage.locate(self.folder)
        if found is None:
            return
        lease = Lease(*found, holder_info(self.purpose))
        deadline = time.monotonic() + self.wait
        while (holder := lease.acquire()) is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                where = storage.redact(storage.portable(self.folder))
                raise FolderInUse(self._busy(holder).replace(str(self.folder), where, 1))
            time.sleep(min(POLL_SECONDS * 4, remaining))
        self._lease = lease
        if self.refresh:
            try:
                storage.pull(self.folder)
            except BaseException:
                self._drop_lease()
                raise

    def _drop_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    def _take(self, fd: int) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FolderInUse(self._busy(read_holder(fd))) from None
                time.sleep(min(POLL_SECONDS, remaining))
            except OSError as err:
                # A file system without locks (some network or FUSE mounts): say which file, not just the errno.
                raise OSError(err.errno, f"cannot lock ({err.strerror})", str(self.path)) from None

    def release(self) -> None:
        """Unlock and close; the file stays (see the module's note) with the last holder's details in it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                self._drop_lease()
            finally:
                self._release_fd(fd)

    @staticmethod
    def _release_fd(fd: int) -> None:
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _busy(self, holder: dict) -> str:
        who = holder.get("purpose") or "another process"
        where = (f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('since')}" if holder
                 else "its details are unreadable")
        waited = f"; still after {self.wait:g} s" if self.wait else ""
        return f"{self.label}: {self.folder} is in use by {who} ({where}{waited}); {self.advice}"


def model_folder_lock(workdir: Path, name: str) -> FolderLock:
    """The lock a trainer holds on one model's folder while it trains and writes it."""
    return FolderLock(workdir, f"training {name}", wait=MODEL_FOLDER_WAIT, label="model folder",
                      advice="another process is training this model into the same output folder; let it finish, "
                             "or give this one another output_dir", refresh=True)


def holder_info(purpose: str) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "since": datetime.now().astimezone().isoformat(timespec="seconds"), "purpose": purpose}


def read_holder(fd: int, attempts: int = 20) -> dict:
    """The holder's details; a holder that has just taken the lock may not have written them yet, so retry a moment."""
    for _ in range(attempts):
        try:
            holder = json.loads(os.pread(fd, 65536, 0) or b"null")
        except ValueError:
            holder = None
        if isinstance(holder, dict):
            return holder
        time.sleep(0.05)
    return {}
