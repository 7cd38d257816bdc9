"""Descriptors held in reserve for outputs and recordings, so a flood on a socket cannot stop an RTMP reconnect.

A few descriptors are kept open on /dev/null; right before an output spawns its child or opens a file they are
closed (the lowest free numbers, so the open that follows gets them), and taken again after. One process-wide
reserve: descriptors are a per-process resource.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

_lock = threading.Lock()
_held: list[int] = []
_size = 0


def hold(n: int) -> int:
    """Keep n descriptors in reserve (0 releases them all); returns how many are held."""
    global _size
    with _lock:
        _size = n
        _refill()
        while len(_held) > _size:
            os.close(_held.pop())
        return len(_held)


def _refill() -> None:
    while len(_held) < _size:
        try:
            _held.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError:
            return  # the table is full right now; the next release/refill tries again


def held() -> int:
    return len(_held)


@contextlib.contextmanager
def released() -> Iterator[None]:
    """Free the reserve for the opens inside the block (serialised: one user at a time), then take it again."""
    with _lock:
        while _held:
            os.close(_held.pop())
        try:
            yield
        finally:
            _refill()
