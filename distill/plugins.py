"""What the ``imports:`` plugins registered, so that it reaches a process which never imported them.

Objects sent to a Ray actor carry a plugin's functions and classes by value (:func:`distill.config.import_plugin`
registers the module with cloudpickle), and a registered model travels with its factory. A worker that looks names
up itself (a sweep trial validates its own config) gets the plugins' entries through :func:`install`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ensemble.data.registry import DATASETS
from ensemble.models.registry import MODELS

from .formats import FORMATS
from .losses import LOSSES
from .method import METHODS
from .teachers import TEACHERS

_ADDED: dict[str, dict[str, Any]] = {}  # registry -> name -> what a plugin registered under it


def registries() -> dict[str, dict]:


    return {"datasets": DATASETS, "models": MODELS, "losses": LOSSES, "methods": METHODS, "teachers": TEACHERS,
            "formats": FORMATS}


@contextmanager
def recording() -> Iterator[None]:
    """Remember every entry the block adds to (or replaces in) a registry."""
    before = {kind: dict(entries) for kind, entries in registries().items()}
    try:
        yield
    finally:
        for kind, entries in registries().items():
            for name, value in entries.items():
                if before[kind].get(name) is not value:
                    _ADDED.setdefault(kind, {})[name] = value


def registered() -> dict[str, dict[str, Any]]:
    """The plugins' entries so far, to send to a worker (pickled by value with their plugin)."""
    return {kind: dict(entries) for kind, entries in _ADDED.items()}


def install(entries: dict[str, dict[str, Any]]) -> None:
    """In a worker: register what the driver's plugins registered."""
    known = registries()
    for kind, items in entries.items():
        known[kind].update(items)
