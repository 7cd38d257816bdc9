"""The disk watermark of the state directory: degraded below it (enqueues refused, recordings paused), back above it.

One reading of free space a second is enough: a file system fills over minutes, and the spool's reserve file covers
the writes of clips already acknowledged in between. Leaving the degraded state needs 10 % more room than entering
it, so a disk hovering at the mark does not flap.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

HYSTERESIS = 1.1


@dataclass(frozen=True)
class DiskReading:
    free_bytes: int
    total_bytes: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def read_disk(path: str | os.PathLike[str]) -> DiskReading:
    st = os.statvfs(path)
    return DiskReading(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


class DiskWatermark:
    """Degraded while free space is under `min_free_bytes` or `min_free_percent`; publishes each change once."""

    def __init__(self, path: str | os.PathLike[str], min_free_bytes: int, min_free_percent: float,
                 publish: Callable[..., Any] | None = None, log: Any = None) -> None:
        self.path = path
        self.min_free_bytes = int(min_free_bytes)
        self.min_free_percent = float(min_free_percent)
        self._publish = publish
        self._log = log
        self._lock = threading.Lock()
        self.degraded = False
        self.episodes = 0
        self.since: float | None = None
        self.last: DiskReading | None = None

    def _low(self, r: DiskReading, factor: float) -> bool:
        return r.free_bytes < self.min_free_bytes * factor or r.free_percent < self.min_free_percent * factor

    def check(self) -> bool:
        """Read free space now and update the state; True while degraded."""
        try:
            r = read_disk(self.path)
        except OSError:
            return self.degraded
        with self._lock:
            self.last = r
            was = self.degraded
            self.degraded = self._low(r, HYSTERESIS if was else 1.0)
            changed = was != self.degraded
            if changed and self.degraded:
                self.episodes += 1
                self.since = time.time()
        if changed:
            kind = "disk_low" if self.degraded else "disk_ok"
            fields = {"path": str(self.path), "free_bytes": r.free_bytes, "free_percent": round(r.free_percent, 2),
                      "min_free_bytes": self.min_free_bytes, "min_free_percent": self.min_free_percent}
            if self._log is not None:
                (self._log.error if self.degraded else self._log.warning)(kind, **fields)
            if self._publish is not None:
                self._publish(kind, **fields)
        return self.degraded

    def refusal(self) -> str | None:
        """Why an enqueue is refused now (None when there is room): names the free space and the mark."""
        if not self.degraded or self.last is None:
            return None
        r = self.last
        return (f"the state directory {self.path} has {r.free_bytes} bytes ({r.free_percent:.1f} %) free, under the "
                f"watermark of {self.min_free_bytes} bytes / {self.min_free_percent:g} %: free some space")

    def status(self) -> dict[str, Any]:
        r = self.last
        return {"degraded": self.degraded, "episodes": self.episodes, "since": self.since,
                "free_bytes": None if r is None else r.free_bytes,
                "free_percent": None if r is None else round(r.free_percent, 2),
                "min_free_bytes": self.min_free_bytes, "min_free_percent": self.min_free_percent}
