"""The types of the config's string fields, so that every path, URI and name obeys the same rules.

An empty string is refused (a CLI flag given as ``''`` used to fall back to the default unseen); a path starts
with ``~`` expanded (else a folder named ``~`` appears); a path that is a URI (``s3://...``) is refused where only a
local path works, instead of becoming a local folder named ``s3:``; ``output_dir`` takes a storage URI too.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import AfterValidator

from ensemble.base import storage

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
SQLITE = "sqlite:///"


def non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("is empty; give a value, or leave the key out for its default")
    return value


def local_path(value: str) -> str:
    non_empty(value)
    if URI.match(value):
        raise ValueError("only local paths are supported for now, not URIs such as s3:// (of the paths, only "
                         "output_dir takes a storage URI)")
    return os.path.expanduser(value)


def output_path(value: str) -> str:
    """``output_dir``: a local path, or a storage URI (``s3://bucket/run?endpoint_override=...``) that
    :mod:`ensemble.base.storage` mirrors; another scheme is refused here, an unreachable store when the run opens it."""
    non_empty(value)
    if URI.match(value):
        reason = storage.scheme_error(value)
        if reason:
            raise ValueError(reason)
        return value
    return os.path.expanduser(value)


def tracking_uri(value: str) -> str:
    """A local store's path has its ``~`` expanded too: a folder, or the file of ``sqlite:///~/mlflow.db``."""
    non_empty(value)
    if value.startswith(SQLITE + "~"):
        return SQLITE + os.path.expanduser(value.removeprefix(SQLITE))
    return value if URI.match(value) else os.path.expanduser(value)


def plugin(value: str) -> str:
    """``imports`` entries: a module name, or a ``.py`` file (a local path)."""
    return local_path(value) if value.strip().endswith(".py") else non_empty(value)


NonEmpty = Annotated[str, AfterValidator(non_empty)]
LocalPath = Annotated[str, AfterValidator(local_path)]
OutputPath = Annotated[str, AfterValidator(output_path)]
TrackingUri = Annotated[str, AfterValidator(tracking_uri)]
Plugin = Annotated[str, AfterValidator(plugin)]
