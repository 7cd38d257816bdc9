"""The health history behind /api/health: one sample of the broadcast's vital signs every `interval_s`, kept for
`history_s` in a ring (6 h at 10 s is 2160 rows), and the GPU memory of this process when it uses CUDA.

A sample reads the same status the `status` command answers (nothing is measured twice); recalibrations are counted
from the event bus so any renderer that publishes `recalibrated` is charted. torch is never imported here: GPU memory
is read only when the renderer already imported it and initialised CUDA (the still renderer never does).
"""

from __future__ import annotations

import collections
import math
import sys
import threading
import time
from typing import Any, Callable

from flashtalk_live.events import Event, EventBus

# The columns of a sample, in order (the API sends rows of these, with this list as the header).
FIELDS = ("t", "uptime_s", "av_skew_s", "render_rtf", "buffered_frames", "underrun_frames", "underrun_episodes",
          "recalibrations", "drift_identity", "drift_colour", "gpu_allocated_bytes")


def gpu_memory() -> list[dict[str, Any]] | None:
    """This process's CUDA memory per device (allocated now, peak, total), or None: no torch imported, no CUDA, or
    CUDA not initialised yet. Never imports torch nor initialises CUDA itself."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return None
        return [{"device": i, "name": torch.cuda.get_device_name(i),
                 "allocated_bytes": int(torch.cuda.memory_allocated(i)),
                 "max_allocated_bytes": int(torch.cuda.max_memory_allocated(i)),
                 "total_bytes": int(torch.cuda.get_device_properties(i).total_memory)}
                for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - a driver error must not break the status page
        return None


def _number(v: Any, digits: int = 4) -> float | int | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v if isinstance(v, int) else round(float(v), digits)


class HealthHistory:
    """Samples `status()` every `interval_s` on its own thread (first sample at once) into a bounded ring."""

    def __init__(self, status: Callable[[], dict[str, Any]], events: EventBus, interval_s: float,
                 history_s: float) -> None:
        self.status, self.events = status, events
        self.interval_s, self.history_s = float(interval_s), float(history_s)
        self._rows: collections.deque[tuple] = collections.deque(maxlen=max(2, math.ceil(history_s / interval_s)))
        self._lock = threading.Lock()
        self._recalibrations = 0
        self._stop = threading.Event()
        events.subscribe(self._on_event)
        self._thread = threading.Thread(target=self._run, name="console-health", daemon=True)
        self._thread.start()

    def _on_event(self, event: Event) -> None:
        if event.get("type") == "recalibrated":
            with self._lock:
                self._recalibrations += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failing status read skips one sample, never the history
                pass
            self._stop.wait(self.interval_s)

    def sample(self) -> tuple:
        """Take one sample now and keep it; returns the row."""
        st = self.status()
        b = st.get("broadcast") or {}
        drift = (st.get("renderer") or {}).get("drift") or {}
        gpus = gpu_memory()
        with self._lock:
            recal = max(self._recalibrations, int(drift.get("recalibrations") or 0))
            row = (round(time.time(), 3), _number(st.get("uptime_s"), 1), _number(b.get("av_skew_s")),
                   _number(b.get("render_rtf")), _number(b.get("buffered_frames")), _number(b.get("underrun_frames")),
                   _number(b.get("underrun_episodes")), recal, _number(drift.get("identity")),
                   _number(drift.get("colour")), sum(g["allocated_bytes"] for g in gpus) if gpus else None)
            self._rows.append(row)
        return row

    def snapshot(self, since: float = 0.0) -> dict[str, Any]:
        """{interval_s, history_s, fields, samples: rows with t > since, oldest first, gpu (omitted without CUDA)}."""
        with self._lock:
            rows = [list(r) for r in self._rows if r[0] > since]
        out: dict[str, Any] = {"interval_s": self.interval_s, "history_s": self.history_s, "fields": list(FIELDS),
                               "samples": rows}
        gpus = gpu_memory()
        if gpus is not None:
            out["gpu"] = gpus
        return out

    def close(self) -> None:
        self._stop.set()
        self.events.unsubscribe(self._on_event)
