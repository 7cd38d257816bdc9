"""In-process event bus: every component publishes here; the PUB socket and the logs subscribe. Every event is
masked once, here, before any subscriber sees it (an error text may quote an output URL)."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable

from flashtalk_live.secrets import mask_obj

Event = dict[str, Any]

# The event types the daemon publishes (documented in docs/protocol.md).
EVENT_TYPES = (
    "accepted", "started", "finished", "interrupted", "dropped", "cancelled", "cleared", "moved", "idle",
    "scheduled", "rescheduled",
    "endpoint_up", "endpoint_down", "underrun", "renderer_changed", "recalibrated", "stopping",
)


class EventBus:
    """Thread-safe fan-out of events to subscribers; a failing subscriber never blocks the publisher.

    Every subscriber sees the events in `seq` order: one event is delivered to all of them before the next is
    numbered. So a subscriber must be quick and must never wait for something a publishing thread holds (a lock,
    another thread's progress): it runs while every other publisher waits.
    """

    def __init__(self) -> None:
        self._subs: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()
        # Held from numbering an event to the end of its delivery, so every subscriber sees events in seq order
        # even when threads publish at once (re-entrant: a subscriber may publish).
        self._deliver = threading.RLock()
        self._seq = itertools.count(1)

    def subscribe(self, fn: Callable[[Event], None]) -> None:
        with self._lock:
            self._subs.append(fn)

    def unsubscribe(self, fn: Callable[[Event], None]) -> None:
        with self._lock:
            if fn in self._subs:
                self._subs.remove(fn)

    def publish(self, type: str, **fields: Any) -> Event:
        masked = mask_obj(fields)
        with self._deliver:
            with self._lock:
                event: Event = {"type": type, "seq": next(self._seq), "ts": time.time(), **masked}
                subs = list(self._subs)
            for fn in subs:
                try:
                    fn(event)
                except Exception:  # noqa: BLE001 - a subscriber's bug must not stop the broadcast
                    pass
        return event
