"""Extension points by name (models, datasets, losses, methods, ...), as torchdistill's registries.

A registry is a dict from name to factory with a ``register`` decorator and a ``lookup`` whose error is one line
naming the field the name came from and the nearest registered names.
"""

from __future__ import annotations

import difflib
from typing import Callable, TypeVar

from ensemble.base.errors import ConfigError

T = TypeVar("T")


class Registry(dict):
    """Factories of one ``kind`` by name."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[T], T]:
        """``@registry.register("name")`` on a factory makes ``name`` resolve to it (a later one replaces it)."""
        def decorator(factory: T) -> T:
            self[name] = factory
            return factory

        return decorator

    def unknown(self, name: str) -> str:
        """``unknown <kind> 'x'; expected one of [...]`` plus the nearest names when there are any."""
        nearest = difflib.get_close_matches(str(name), list(self), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(n) for n in nearest)}?)" if nearest else ""
        return f"unknown {self.kind} {name!r}{hint}; expected one of {sorted(self)}"

    def lookup(self, name: str, field: str, error: type[Exception] = ConfigError):
        """The factory registered as ``name``, else ``error("<field>: unknown ...")``."""
        if name not in self:
            raise error(f"{field}: {self.unknown(name)}")
        return self[name]
