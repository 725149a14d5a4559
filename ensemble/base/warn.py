"""Warnings that point at the user's line: the first caller outside this library, however deep the call."""

from __future__ import annotations

import sys
from pathlib import Path

# The three packages' folders; a frame whose file lies under one is the library's own.
_LIBRARY = tuple(str(Path(__file__).resolve().parents[2] / package) + "/"
                 for package in ("ensemble", "specialists", "distill"))


def user_stacklevel() -> int:
    """The ``stacklevel`` for a ``warnings.warn`` in the function calling this one, such that the warning names the
    first frame outside the library (1 is that function itself)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(_LIBRARY):
        frame, level = frame.f_back, level + 1
    return level
