"""A folder lock on object storage: a lease object ``<folder>/.lease`` created only if absent, renewed while held,
taken over once it has expired (:class:`ensemble.base.lock.FolderLock` uses it for a mirrored folder).

Guarantees, by store:

* S3 with ``boto3`` installed: the lease is created with ``PutObject`` ``If-None-Match: *``, renewed and taken over
  with ``If-Match: <its ETag>``, so of any number of processes on any nodes at most one holds it at a time, as long
  as the holder renews it within :data:`TTL` (a background thread does, every :data:`TTL` / 4) and the hosts'
  clocks agree to within the TTL. A holder that dies stops renewing: its lease is taken over after :data:`TTL`.
  A store that ignores the conditions (some S3-compatible servers) weakens this to the next point.
* Other stores, or S3 without ``boto3`` (pyarrow has no conditional write): best effort. A process writes its own
  token when the lease is absent or expired, waits a moment and reads it back; two processes that start within
  that moment of each other may both hold it. Use one driver per output_dir there.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

from ensemble.base.storage import Remote

TTL = 60.0
SETTLE = 0.5  # the best-effort lease's wait before reading its token back


class Lease:
    """``acquire() -> holder dict or None`` (``None``: taken by us), ``release()``."""

    def __init__(self, remote: Remote, relative: str, info: dict):
        self.remote, self.key = remote, remote.join(f"{relative}/.lease" if relative else ".lease")
        self.info, self.token = info, secrets.token_hex(8)
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._s3 = _s3_client(remote) if remote.is_s3 else None

    def _body(self) -> bytes:
        return json.dumps({**self.info, "token": self.token, "expires": time.time() + TTL}).encode()

    def acquire(self) -> dict | None:
        """Take the lease, or return the details of its live holder."""
        holder = self._try()
        if holder is None:
            self._thread = threading.Thread(target=self._renew, daemon=True, name="lease-renewal")
            self._thread.start()
        return holder

    def _try(self) -> dict | None:
        current, etag = self._read()
        if current is not None and current.get("expires", 0) > time.time():
            return current
        if self._s3 is not None:
            return None if self._put_s3(etag if current is not None else None) else (self._read()[0] or {})
        self._write(self._body())
        time.sleep(SETTLE)
        mine, _ = self._read()
        return None if mine is not None and mine.get("token") == self.token else (mine or {})

    def _renew(self) -> None:
        while not self._stop.wait(TTL / 4):
            try:
                if self._s3 is not None:
                    self._put_s3(self._etag)
                else:
                    self._write(self._body())
            except Exception:  # noqa: BLE001 - a store that blips: the next renewal, well within the TTL, retries
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        current, _ = self._read()
        if current is not None and current.get("token") == self.token:
            try:
                self.remote.fs.delete_file(self.key)
            except OSError:
                pass  # it expires by itself

    # --- the store ---

    def _read(self) -> tuple[dict | None, str | None]:
        if self._s3 is not None:
            bucket, key = self.key.split("/", 1)
            try:
                got = self._s3.get_object(Bucket=bucket, Key=key)
                return _decode(got["Body"].read()), got.get("ETag")
            except self._s3.exceptions.NoSuchKey:
                return None, None
        try:
            with self.remote.fs.open_input_stream(self.key) as src:
                return _decode(src.read()), None
        except FileNotFoundError:
            return None, None

    def _write(self, body: bytes) -> None:
        with self.remote.fs.open_output_stream(self.key) as out:
            out.write(body)

    def _put_s3(self, etag: str | None) -> bool:
        """Create (no ``etag``) or replace the version ``etag``; False when another process won."""
        from botocore.exceptions import ClientError

        bucket, key = self.key.split("/", 1)
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            self._etag = self._s3.put_object(Bucket=bucket, Key=key, Body=self._body(), **condition)["ETag"]
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict",
                                                             "412", "409"):
                return False
            raise


def _decode(raw: bytes) -> dict:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _s3_client(remote: Remote) -> Any | None:
    """A boto3 client for the same endpoint and region as pyarrow's, or ``None`` without boto3."""
    try:
        import boto3
    except ImportError:
        return None
    options = remote.fs.__reduce__()[1][0]
    endpoint = options.get("endpoint_override") or None
    if endpoint and "://" not in endpoint:
        endpoint = f"{options.get('scheme') or 'https'}://{endpoint}"
    return boto3.client("s3", endpoint_url=endpoint, region_name=options.get("region") or "us-east-1",
                        aws_access_key_id=options.get("access_key") or None,
                        aws_secret_access_key=options.get("secret_key") or None,
                        aws_session_token=options.get("session_token") or None)
