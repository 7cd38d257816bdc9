"""The box as a lock between the test processes of one run (`pytest -n N`, pytest-xdist): every test holds it
shared, a test marked `alone` holds it alone, so nothing else of the run is on the box beside it (the playout drills:
their tiny FlashTalk renderer on the CPU needs the box to itself, as a room does).

A reader-writer lock of two `flock`s in a folder all workers share: a test takes the turnstile, then the box (shared
or exclusive), then lets the turnstile go. A test waiting to be alone keeps the turnstile while the tests already
running end, so no new one starts before it (no starvation by a stream of shared holders). The lock is held from
the start of a test's setup to the end of its teardown (a module's fixtures included), and it is taken before
pytest-timeout starts its clock: time spent waiting for the box is not the test's.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO


class BoxLock:
    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._turnstile: IO[bytes] = open(folder / "turnstile.lock", "ab")
        self._box: IO[bytes] = open(folder / "box.lock", "ab")

    def acquire(self, alone: bool) -> None:
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._box, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)

    def release(self) -> None:
        fcntl.flock(self._box, fcntl.LOCK_UN)

    def close(self) -> None:
        self._turnstile.close()
        self._box.close()
