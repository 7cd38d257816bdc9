"""Push to air: how long each queue clip took from its acknowledgement to its first frame on air, by kind.

Every event carries `mono` (the daemon's monotonic clock, events.py), so a client can compute push->air from
`accepted` and `started`; this module does it in the daemon for `status` (`latency`) and the metrics
(`flashtalk_push_to_air_seconds{kind}`, a histogram). Kinds:

* `enqueue_idle`: enqueued into a room with no clip on air and none queued; `enqueue_behind`: any other enqueue;
* `insert`, `play_now`: by mode;
* `stream_first_byte`: a streamed clip, from its first acknowledged audio piece (the producer had nothing to send
  before; queue/streams.py) to its first frame on air.

A clip counts once: the first time it airs (a clip cut by play_now that replays, or one recovered after a crash,
does not count again). An EventBus subscriber; thread-safe.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

KINDS = ("enqueue_idle", "enqueue_behind", "insert", "play_now", "stream_first_byte")
BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
KEEP = 1000  # samples per kind kept for the percentiles in status
PENDING_LIMIT = 10_000  # accepted clips remembered until they air


class PushToAir:
    """Subscribe `on_event` to the EventBus. `room_idle()`: no clip on air and nothing else queued (asked at the
    `accepted` of an enqueue); `first_byte(segment_id)`: a streamed clip's first audio's monotonic time, or None."""

    def __init__(self, room_idle: Callable[[], bool], first_byte: Callable[[str], float | None]) -> None:
        self.room_idle, self.first_byte = room_idle, first_byte
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[str, float]] = {}  # segment_id -> (kind, accepted mono)
        self._samples: dict[str, list[float]] = {k: [] for k in KINDS}
        self._counts: dict[str, list[int]] = {k: [0] * len(BUCKETS) for k in KINDS}
        self._n = dict.fromkeys(KINDS, 0)
        self._sum = dict.fromkeys(KINDS, 0.0)
        self._max = dict.fromkeys(KINDS, 0.0)

    def on_event(self, e: dict[str, Any]) -> None:
        t, sid = e["type"], e.get("segment_id")
        if not sid or "mono" not in e:
            return
        if t == "accepted":
            kind = "stream_first_byte" if e.get("stream") else str(e.get("mode"))
            if kind == "enqueue":
                kind = "enqueue_idle" if self.room_idle() else "enqueue_behind"
            with self._lock:
                self._pending[sid] = (kind, float(e["mono"]))
                while len(self._pending) > PENDING_LIMIT:
                    self._pending.pop(next(iter(self._pending)))
        elif t == "started" and e.get("source") == "queue":
            with self._lock:
                got = self._pending.pop(sid, None)
            if got is None:
                return
            kind, since = got
            if kind == "stream_first_byte":
                fb = self.first_byte(sid)
                if fb is None:
                    return
                since = fb
            self.observe(kind, float(e["mono"]) - since)
        elif t in ("dropped", "finished") or (t == "interrupted" and not e.get("requeued")):
            with self._lock:
                self._pending.pop(sid, None)

    def observe(self, kind: str, seconds: float) -> None:
        with self._lock:
            s = self._samples[kind]
            s.append(seconds)
            del s[:-KEEP]
            for i, le in enumerate(BUCKETS):
                if seconds <= le:
                    self._counts[kind][i] += 1
            self._n[kind] += 1
            self._sum[kind] += seconds
            self._max[kind] = max(self._max[kind], seconds)

    def status(self) -> dict[str, Any]:
        """Per kind: count, sum, max, p50/p99 of the last KEEP, and the cumulative histogram buckets."""
        out: dict[str, Any] = {}
        with self._lock:
            for k in KINDS:
                s = sorted(self._samples[k])
                out[k] = {"count": self._n[k], "sum_s": round(self._sum[k], 4), "max_s": round(self._max[k], 4),
                          "p50_s": round(s[len(s) // 2], 4) if s else None,
                          "p99_s": round(s[min(len(s) - 1, int(len(s) * 0.99))], 4) if s else None,
                          "buckets": [[le, c] for le, c in zip(BUCKETS, self._counts[k])]}
        return out
