"""In-process event bus: every component publishes here; the PUB socket and the logs subscribe. Every event is
masked once, here, before any subscriber sees it (an error text may quote an output URL)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
import threading
import time
from typing import Any, Callable

from flashtalk_live.secrets import mask_obj

Event = dict[str, Any]


@dataclass(frozen=True)
class EventType:
    """One kind of event: its name, its payload fields (beyond `type`, `seq`, `ts` and `mono`, the daemon's monotonic
    clock for intervals such as push -> air) with their types as the wire
    carries them, and when it is published. `optional` fields may be absent. docs/protocol.md's event table, the
    console's event lines and the `events` verb follow from `EVENTS`."""

    name: str
    fields: dict[str, str]
    when: str
    optional: frozenset[str] = frozenset()


_CLIP_ON_AIR = {"segment_id": "string", "source": "queue | programme", "frame": "int", "media_time_s": "float",
                "name": "string"}
_NAMED = frozenset({"name"})  # push --name, or a programme item's playlist name: only when the clip has one
_PLANNED = {"segment_id": "string", "planned_in_s": "float", "planned_media_time_s": "float",
            "state": "buffered | pending", "waits": "string | null"}
_DISK = {"path": "string", "free_bytes": "int", "free_percent": "float", "min_free_bytes": "int",
         "min_free_percent": "float"}

# Every event the daemon publishes, declared once (adding an event is one entry here plus its publish call).
EVENTS: dict[str, EventType] = {e.name: e for e in (
    EventType("accepted", {"segment_id": "string", "mode": "enqueue | insert | play_now", "position": "int",
                           "duration_s": "float", "request_id": "string | null", "meta": "object", "name": "string",
                           "stream": "true"},
              "a clip was committed to the queue (after its ack); `stream`: a streamed clip (clip_open)",
              frozenset({"name", "stream"})),
    EventType("scheduled", _PLANNED, "a clip got its first planned on-air time (after `accepted`)"),
    EventType("rescheduled", {**_PLANNED, "previous_media_time_s": "float"},
              "its planned start moved by more than 2 s (an edit, a hiccup, a change of renderer)"),
    EventType("started", {**_CLIP_ON_AIR, "cut_mono": "float", "rendered_mono": "float"},
              "the clip's first frame goes on air; a queue clip's `cut_mono`/`rendered_mono`: when its first chunk "
              "was cut and rendered (the push-to-air stages)", _NAMED | {"cut_mono", "rendered_mono"}),
    EventType("finished", _CLIP_ON_AIR, "its last frame went on air; it is deleted from the spool", _NAMED),
    EventType("interrupted", {**_CLIP_ON_AIR, "requeued": "true", "reason": "string", "was": "pending"},
              "cut by `cancel` or unplayable: not replayed; cut by `play_now` (`requeued`): it replays after the "
              "play_now clip and ends later with its own `finished`; `reason: stream_timeout`: a streamed clip whose producer "
              "went silent past streams.idle_timeout_s",
              optional=frozenset({"requeued", "name", "reason", "was", "frame", "media_time_s"})),
    EventType("cancelled", {"segment_id": "string", "was": "pending | playing", "name": "string",
                            "reason": "string"},
              "a `cancel` request succeeded (`reason: aborted`: a `clip_abort`)", frozenset({"name", "reason"})),
    EventType("skipped", {"segment_id": "string", "source": "queue | programme", "name": "string"},
              "a `skip` cut what was on air (a queue clip is dropped; the programme goes on with its next item)",
              _NAMED),
    EventType("dropped", {"segment_id": "string", "reason": "cleared | cancelled | aborted"},
              "a pending clip left the queue without airing"),
    EventType("cleared", {"segment_ids": "list of string", "count": "int"}, "a `clear` request"),
    EventType("moved", {"segment_id": "string", "position_was": "int", "position": "int"},
              "a `move` request changed the order"),
    EventType("stream_closed", {"segment_id": "string", "duration_s": "float", "received_bytes": "int",
                                "parts": "int", "cut": "true", "reason": "string"},
              "a streamed clip's producer closed it (`clip_close`), or its idle timeout cut it (`cut`, `reason`)",
              frozenset({"duration_s", "received_bytes", "parts", "cut", "reason"})),
    EventType("idle", {"frame": "int", "media_time_s": "float"}, "nothing from the queue is on air any more"),
    EventType("endpoint_up", {"output": "string", "url": "string (key masked)", "reconnects": "int"},
              "an output connected"),
    EventType("endpoint_down", {"output": "string", "url": "string (key masked)", "error": "string | null",
                                "reconnects": "int"}, "an output failed or was stopped"),
    EventType("underrun", {"episode": "int", "out_frame": "int", "frames": "int", "where": "clip | idle"},
              "the air had no new frame in time: the last frame repeats with silence (episode starts)"),
    EventType("renderer_changed", {"renderer": "string", "previous": "string", "reason": "string", "frame": "int",
                                   "media_time_s": "float"},
              "the first frame of another renderer's avatar went out (model loaded, fallback to still, recovery)"),
    EventType("recalibrated", {"reason": "string", "chunk": "int", "frame": "int", "before": "object | null",
                               "after": "object | null"}, "the engine re-anchored identity or colour drift"),
    EventType("disk_low", _DISK, "free space under storage.min_free_*: new clips refused, recordings paused"),
    EventType("disk_ok", _DISK, "free space back above the watermark"),
    EventType("spool_quarantined", {"moved_to": "string", "fresh": "string", "error": "string"},
              "the spool was unreadable at start: moved aside (see `spool salvage`), a fresh one opened"),
    EventType("key_revoked", {"name": "string (its certificate)", "key": "string (first 8 characters)"},
              "a client key was revoked (removed from ingest.client_keys_dir, `keys revoke`): its connections closed"),
    EventType("reloaded", {"client_keys": "string", "log_level": "string", "outputs_added": "list of string",
                           "outputs_removed": "list of string"}, "SIGHUP was applied (what was reloaded)",
              frozenset({"client_keys", "log_level", "outputs_added", "outputs_removed"})),
    EventType("stopping", {}, "SIGTERM: the daemon finishes the chunk on air and stops"),
    EventType("pong", {"nonce": "string | null"}, "answer to `ping` with `event: true` (on the socket only)"),
)}
EVENT_TYPES = tuple(EVENTS)


def events_table() -> str:
    """docs/protocol.md's event table, made from EVENTS (tests/foundation/test_events.py keeps the doc equal)."""
    rows = ["| type | fields | when |", "|---|---|---|"]
    for e in EVENTS.values():
        fields = ", ".join(f"`{k}`{' (optional)' if k in e.optional else ''}: {v.replace(' | ', ' or ')}" for k, v in e.fields.items())
        rows.append(f"| `{e.name}` | {fields or '-'} | {e.when} |")
    return "\n".join(rows) + "\n"


class UnknownEvent(LookupError):
    """A publish of a type missing from EVENTS: a daemon bug (tests/foundation/test_events.py also checks every
    publish call's fields against the table)."""


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
        if type not in EVENTS:
            raise UnknownEvent(f"event type {type!r} is not declared in flashtalk_live.events.EVENTS")
        masked = mask_obj(fields)
        with self._deliver:
            with self._lock:
                # mono: the daemon's monotonic clock, so intervals between events (push -> air) survive clock steps
                event: Event = {"type": type, "seq": next(self._seq), "ts": time.time(), "mono": time.monotonic(),
                                **masked}
                subs = list(self._subs)
            for fn in subs:
                try:
                    fn(event)
                except Exception:  # noqa: BLE001 - a subscriber's bug must not stop the broadcast
                    pass
        return event
