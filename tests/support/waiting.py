"""Polling: the one wait-for-a-condition helper of the tests (never a bare sleep standing for "it should be done")."""

from __future__ import annotations

import time
from typing import Any, Callable


def until(pred: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition", *, every_s: float = 0.1) -> Any:
    """pred()'s first truthy value, polled every `every_s`; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
