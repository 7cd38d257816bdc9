"""Push -> air latency: seconds from a clip's acceptance (the `accepted` event, its ack) to its first frame on air
(`started`), measured on the event bus, for the fleet dashboard (metrics: flashtalk_push_to_air_seconds).

A clip counts once, at its first start (a replay after play_now cut it is not a new push). A clip accepted by an
earlier run of the daemon (recovered from the spool) is not measured: its acceptance is not on this bus. At most
`max_tracked` clips wait to start (queue.max_clips is 2000 by default); beyond that the oldest are forgotten.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from flashtalk_live.events import Event, EventBus

GONE = ("dropped", "cancelled")


class PushToAir:
    def __init__(self, events: EventBus, max_tracked: int = 10_000) -> None:
        self._accepted: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.max_tracked = max_tracked
        self.count = 0
        self.sum_s = 0.0
        self.last_s: float | None = None
        self.events = events
        events.subscribe(self._on_event)

    def _on_event(self, e: Event) -> None:
        sid = e.get("segment_id")
        if not isinstance(sid, str):
            return
        kind = e.get("type")
        with self._lock:
            if kind == "accepted":
                self._accepted[sid] = float(e["ts"])
                while len(self._accepted) > self.max_tracked:
                    self._accepted.popitem(last=False)
            elif kind == "started" and e.get("source") == "queue":
                t0 = self._accepted.pop(sid, None)
                if t0 is not None:
                    self.last_s = max(0.0, float(e["ts"]) - t0)
                    self.count += 1
                    self.sum_s += self.last_s
            elif kind in GONE:
                self._accepted.pop(sid, None)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"count": self.count, "sum_s": round(self.sum_s, 3),
                    "last_s": None if self.last_s is None else round(self.last_s, 3), "waiting": len(self._accepted)}

    def close(self) -> None:
        self.events.unsubscribe(self._on_event)
