"""Nothing ever hangs: a network wait is retried for a bounded time, then given up with the reason."""

from __future__ import annotations

import time
from typing import Callable


def retry_for(seconds: float, attempt: Callable[[float], None], pause: float = 1.0) -> OSError | None:
    """Call ``attempt(timeout)`` until it returns, for at most about ``seconds``; None then, else the last OSError.

    Each attempt gets what is left of the time (5 s at most); a refused connection is retried after ``pause``,
    since a server that is still starting refuses too.
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            attempt(max(0.5, min(5.0, deadline - time.monotonic())))
            return None
        except OSError as err:
            if time.monotonic() + pause >= deadline:
                return err
            time.sleep(pause)
