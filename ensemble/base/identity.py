"""Names for what is reused from disk: a short stable hash of everything that defines it."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def fingerprint(obj: Any) -> str:
    """A short stable hash of a JSON-able value (configs, split descriptions)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
