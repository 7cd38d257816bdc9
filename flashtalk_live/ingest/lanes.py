"""Request handling off the ingest thread: each connection's requests run in order, connections run in parallel.

The ingest thread only receives, identifies the peer and queues; a small thread pool decodes audio and images and
runs the handlers, so one slow request (a long clip, a big image) never holds up the other clients. A connection's
own requests keep their order (an enqueue then a clear from one producer act in that order).
"""

from __future__ import annotations

import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Hashable

from flashtalk_live.ingest.protocol import ProtocolError


class Lanes:
    """A FIFO lane per key on `workers` threads; at most `per_lane` and `total` requests waiting or running."""

    def __init__(self, workers: int, per_lane: int, total: int) -> None:
        self.per_lane, self.total = per_lane, total
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="ingest-worker")
        self._lanes: dict[Hashable, collections.deque[Callable[[], None]]] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._closed = False

    @property
    def inflight(self) -> int:
        return self._count

    def submit(self, key: Hashable, job: Callable[[], None]) -> None:
        """Queue `job` on the lane of `key`; ProtocolError `busy` over either cap."""
        with self._lock:
            if self._closed:
                raise ProtocolError("busy", "the daemon is stopping")
            lane = self._lanes.get(key)
            if lane is not None and len(lane) >= self.per_lane:
                raise ProtocolError("busy", f"{len(lane)} requests of this connection are still being handled "
                                    "(ingest.max_inflight_per_peer): wait for their replies")
            if self._count >= self.total:
                raise ProtocolError("busy", f"{self._count} requests are being handled (ingest.max_inflight): retry")
            self._count += 1
            if lane is None:
                self._lanes[key] = collections.deque([job])
                self._pool.submit(self._run, key)
            else:
                lane.append(job)

    def _run(self, key: Hashable) -> None:
        with self._lock:
            job = self._lanes[key][0]
        try:
            job()  # jobs catch their own errors; a raise here must still free the lane
        finally:
            with self._lock:
                lane = self._lanes[key]
                lane.popleft()
                self._count -= 1
                if lane and not self._closed:
                    self._pool.submit(self._run, key)  # one job per turn keeps lanes fair
                else:
                    del self._lanes[key]

    def close(self) -> None:
        """Finish the jobs already running, drop the waiting ones."""
        with self._lock:
            self._closed = True
            for lane in self._lanes.values():
                while len(lane) > 1:
                    lane.pop()
                    self._count -= 1
        self._pool.shutdown(wait=True)
