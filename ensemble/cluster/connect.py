"""Which Ray to use: a local Ray of this process's own unless a cluster is named, and never a dead one.

``ray.init()`` with no address joins whatever cluster Ray recorded in its temp folder (``ray_current_cluster``),
even one that was killed without ``ray stop``, and then retries its GCS for many minutes. So:

- no ``ray.address`` and no ``RAY_ADDRESS``: ``ray.init(address="local")``, a fresh Ray that ends with the process;
- ``RAY_ADDRESS`` (set for a submitted job) or ``ray.address`` (``auto`` or ``host:port``): join that cluster,
  after a bounded TCP probe of its GCS port, so an address where nothing listens is one line, not a hang.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

import ray

from ensemble.base.bounded import retry_for
from ensemble.base.errors import ResourceError

PROBE_SECONDS = 10.0  # total wait for a cluster's GCS port to accept a connection


def _recorded_address() -> str | None:
    """What ``auto`` means here: the cluster the last ``ray start`` on this machine recorded (Ray's own record file,
    so RAY_TMPDIR applies). Unlike Ray's ``auto`` this never falls back to any Ray process it finds running, which
    may be another user's local Ray, and it logs nothing."""
    from ray._private.utils import read_ray_address

    recorded = read_ray_address()
    return recorded or None


def resolve_address(address: str | None) -> tuple[str | None, str]:
    """``(host:port to join, or None for a local Ray; where it came from)``. RAY_ADDRESS wins, as in Ray."""
    env = os.environ.get("RAY_ADDRESS")
    source = "RAY_ADDRESS" if env else "ray.address"
    address = env or address
    if address in (None, "", "local"):
        return None, "local"
    if address == "auto":
        recorded = _recorded_address()
        if recorded is None:
            raise ResourceError(f"{source}: 'auto' found no cluster recorded by `ray start` on this machine; start "
                                "one with `ray start --head`, give its address, or leave ray.address unset for a "
                                "local Ray")
        return recorded, f"{source}=auto"
    return address, source


def _host_port(address: str) -> tuple[str, int] | None:
    rest = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def probe(address: str, source: str, seconds: float = PROBE_SECONDS) -> None:
    """Fail in at most ``seconds`` if nothing accepts connections at ``address`` (Ray itself would retry for
    minutes); a head that is still starting opens its port soon, so a refusal is retried until then."""
    parsed = _host_port(address)
    if parsed is None:
        raise ResourceError(f"{source}: {address!r} is not a Ray address; expected host:port, 'auto' or 'local'")

    def connect(timeout: float) -> None:
        socket.create_connection(parsed, timeout=timeout).close()

    err = retry_for(seconds, connect)
    if err is not None:
        reason = err.strerror or type(err).__name__
        hint = " (the cluster Ray recorded on this machine, stopped without `ray stop`?)" if source.endswith(
            "=auto") else ""
        raise ResourceError(
            f"{source}: no Ray cluster answers at {address}{hint} ({reason} after {seconds:.0f} s); start "
            "it, fix the address, or leave ray.address and RAY_ADDRESS unset to run on a local Ray")


def connect_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: float | None = None) -> None:
    """Join the named cluster (``RAY_ADDRESS`` or ``address``) once it answers; else start a local Ray."""
    if ray.is_initialized():
        return
    target, source = resolve_address(address)
    if target is not None:
        probe(target, source)
    # ray.init replaces the SIGTERM handler (its core worker aborts the process); keep the application's own,
    # so the CLI can still end its MLflow runs as KILLED when a job is stopped.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if in_main_thread else None
    # WARNING: Ray's INFO banners ("Started a local Ray instance", "Connecting to existing Ray cluster") would be
    # more stderr lines beside a run's one-line error.
    if target is not None:
        ray.init(address=target, log_to_driver=True, logging_level=logging.WARNING)
    else:
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, log_to_driver=True,
                 logging_level=logging.WARNING)
    if in_main_thread and previous is not None:
        signal.signal(signal.SIGTERM, previous)
