"""Edits act on air time: discard the buffered (rendered, not aired) future from the first affected frame and re-cut it.

The render thread cuts chunks through `Replanner.next_chunk()` and hands rendered ones to `put()`; a control command
that changes the plan runs its spool change inside `editing(command, segment_id)`, which first re-plans:

* `play_now`, and `cancel` of the clip on air: from the air boundary (the first chunk the pacer has not taken),
  so the cut airs at most one chunk after the command and the new clip is cut from the frame on air.
* `insert`, `clear`, `cancel` of any other clip: from the first buffered chunk that holds anything besides the clip
  on air, which keeps its buffered frames (and so its head start).

Re-planning drops those chunks from the look-ahead (under its lock, so none goes on air meanwhile), rewinds the
timeline (clips taken for them go back to the queue's head; timeline/timeline.py) and bumps the plan epoch; a chunk
being rendered from the old plan is dropped when it is put. Holding the lock across the spool change means the
render thread cannot cut between the re-plan and the edit: buffered clips are pending again when the edit sees the
queue, so they are ordered, cancelled and cleared exactly like pending clips.
"""

from __future__ import annotations

import collections
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from flashtalk_live.log import get_logger
from flashtalk_live.timeline.chunk import RenderChunk, RenderedChunk

FROM_AIR = frozenset({"play_now"})  # commands that re-plan from the air boundary


class Replanner:
    def __init__(self, timeline: Any, lookahead: Any, *, poll_s: float = 0.02) -> None:
        self.timeline, self.lookahead = timeline, lookahead
        self.lock = threading.RLock()
        self.plan = 0
        self._voids: collections.deque[tuple[int, int]] = collections.deque(maxlen=256)  # (plan, from_frame)
        self.poll_s = poll_s
        self.replans = 0
        self.chunks_dropped_in_flight = 0
        self.last: dict[str, Any] | None = None
        self._log = get_logger("replan")

    # -- the render thread --------------------------------------------------------------------------
    def next_chunk(self) -> RenderChunk:
        with self.lock:
            self.timeline.forget_before(self.lookahead.next_air_frame)
            chunk = self.timeline.next_chunk()
            chunk.plan = self.plan
            return chunk

    def _stale(self, chunk: RenderChunk) -> bool:
        return any(p > chunk.plan and chunk.start_frame >= f for p, f in self._voids)

    def put(self, item: RenderedChunk, stop: threading.Event) -> bool:
        """Put a rendered chunk in the look-ahead, waiting for room; False if a re-plan discarded it or on stop."""
        while not stop.is_set():
            with self.lock:
                if self._stale(item.chunk):
                    self.chunks_dropped_in_flight += 1
                    return False
                if self.lookahead.put(item, timeout=0):
                    return True
            time.sleep(self.poll_s)  # full: the pacer frees a slot once a chunk airs
        return False

    # -- control commands ---------------------------------------------------------------------------
    def replan(self, command: str, segment_id: str | None = None) -> int | None:
        """Discard the buffered future from the first frame `command` affects; returns that frame (None: nothing)."""
        with self.lock:
            tl = self.timeline

            def choose(air: int | None) -> int:
                from_air = command in FROM_AIR or (command == "cancel" and segment_id is not None
                                                   and segment_id == tl.clip_at(air))
                return tl.replan_point(air, keep_on_air=not from_air)

            frame = self.lookahead.truncate(choose)
            if frame >= tl.frame:
                return None
            undone = tl.rewind(frame)
            self.plan += 1
            self._voids.append((self.plan, frame))
            self.replans += 1
            self.last = {"command": command, "from_frame": frame,
                         "returned": [a for op, a in undone if op == "take"]}
            self._log.info("replanned", command=command, from_frame=frame, plan=self.plan,
                           returned_to_queue=self.last["returned"])
            return frame

    @contextmanager
    def editing(self, command: str, segment_id: str | None = None) -> Iterator[None]:
        """Re-plan for `command`, then run the caller's spool change before the render thread cuts again."""
        with self.lock:
            self.replan(command, segment_id)
            yield

    def status(self) -> dict[str, Any]:
        return {"plan": self.plan, "replans": self.replans, "chunks_discarded": self.lookahead.chunks_discarded,
                "chunks_dropped_in_flight": self.chunks_dropped_in_flight, "last_replan": self.last}
