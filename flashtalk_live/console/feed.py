"""The console's view of the event bus: the last events (for /api/events and a new stream's backlog) and the live
server-sent-event streams of /api/events/stream.

The bus calls `_on_event` on the publisher's thread (the broadcast loop among them), so it only appends to bounded
queues: each stream has its own, of `queue_size` events. A client too slow to drain it loses its stream (its queue is
dropped at once, never waited on); a browser's EventSource reconnects with Last-Event-ID and gets what it missed
from the ring. At most `max_streams` streams are open; one more is refused (`busy`).
"""

from __future__ import annotations

import collections
import json
import threading
from typing import Iterator

from flashtalk_live.events import Event, EventBus

KEEPALIVE_S = 15.0  # a comment line this often: proxies keep the stream open and a gone client is noticed
RETRY_MS = 2000  # the browser's reconnect delay after a stream ends


class _Stream:
    """One client's bounded queue. `lost`: it overflowed (or the console closed) and the stream must end."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.queue: collections.deque[Event] = collections.deque()
        self.cond = threading.Condition()
        self.lost = False

    def offer(self, event: Event) -> None:
        with self.cond:
            if self.lost:
                return
            if len(self.queue) >= self.size:
                self.lost = True
                self.queue.clear()
            else:
                self.queue.append(event)
            self.cond.notify()

    def take(self, timeout_s: float) -> list[Event] | None:
        """Events queued now (waiting up to timeout_s for one; [] on timeout); None once the stream is lost."""
        with self.cond:
            if not self.queue and not self.lost:
                self.cond.wait(timeout_s)
            if self.lost:
                return None
            out = list(self.queue)
            self.queue.clear()
            return out

    def end(self) -> None:
        with self.cond:
            self.lost = True
            self.cond.notify()


def sse_message(event: Event) -> bytes:
    """One server-sent event: its seq as the id (Last-Event-ID on reconnect), the JSON as its data."""
    return f"id: {event.get('seq', 0)}\ndata: {json.dumps(event, default=str)}\n\n".encode()


class EventFeed:
    """The last `size` events of the bus (already masked by it) and up to `max_streams` live streams."""

    def __init__(self, events: EventBus, size: int, max_streams: int, queue_size: int = 256) -> None:
        self._ring: collections.deque[Event] = collections.deque(maxlen=size)
        self._streams: set[_Stream] = set()
        self._lock = threading.Lock()
        self._events = events
        self.max_streams, self.queue_size = max_streams, queue_size
        self.streams_lost = 0  # streams ended because their client was too slow
        events.subscribe(self._on_event)

    def _on_event(self, event: Event) -> None:
        with self._lock:
            self._ring.append(event)
            streams = list(self._streams)
        for s in streams:
            s.offer(event)

    def since(self, after: int = 0) -> list[Event]:
        with self._lock:
            return [e for e in self._ring if e.get("seq", 0) > after]

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._streams)

    def open(self, after: int, closed: threading.Event) -> "_Body | None":
        """A new stream's response body: the ring's events after `after`, then the live ones (no gap, no repeat
        between the two), until `closed` is set. None when `max_streams` are open."""
        with self._lock:
            if len(self._streams) >= self.max_streams:
                return None
            s = _Stream(self.queue_size)
            self._streams.add(s)
            backlog = [e for e in self._ring if e.get("seq", 0) > after]
        return _Body(self, s, backlog, closed)

    def _release(self, stream: _Stream) -> None:
        with self._lock:
            self._streams.discard(stream)

    def _lost(self) -> None:
        with self._lock:
            self.streams_lost += 1

    def close(self) -> None:
        self._events.unsubscribe(self._on_event)
        with self._lock:
            streams = list(self._streams)
        for s in streams:
            s.end()


class _Body:
    """A WSGI body: retry hint, backlog, then live events and keep-alive comments until the client goes, falls too
    far behind, or the console closes. The server calls close() however the response ends."""

    def __init__(self, feed: EventFeed, stream: _Stream, backlog: list[Event], closed: threading.Event) -> None:
        self.feed, self.stream, self.backlog, self.closed = feed, stream, backlog, closed

    def __iter__(self) -> Iterator[bytes]:
        yield f"retry: {RETRY_MS}\n\n".encode()
        # No event is in both the backlog and the queue: open() took the one and joined the other atomically.
        for e in self.backlog:
            yield sse_message(e)
        while not self.closed.is_set():
            got = self.stream.take(KEEPALIVE_S)
            if got is None:
                if not self.closed.is_set():
                    self.feed._lost()
                return
            if not got:
                yield b": keep-alive\n\n"
            for e in got:
                yield sse_message(e)

    def close(self) -> None:
        self.feed._release(self.stream)
