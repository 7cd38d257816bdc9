"""On-air bookkeeping: what aired becomes events and spool commits, what will air becomes a published plan."""

from __future__ import annotations

import collections

import threading
import time
from typing import Any, Callable, Sequence

from flashtalk_live.events import EventBus
from flashtalk_live.log import get_logger
from flashtalk_live.queue.spool import Spool
from flashtalk_live.playout.admission import Admission
from flashtalk_live.chunks import Mark, RenderChunk
from flashtalk_live.playout.plan import RESCHEDULE_THRESHOLD_S, Planned, plan_on_air
from flashtalk_live.playout.replan import Replanner
from flashtalk_live.playout.timeline import Timeline

PLAN_LIMIT = 50  # pending clips given a planned on-air time (status, events)


def publish_underrun(events: EventBus, info: dict[str, Any]) -> None:
    """The pacer's underrun callback: one `underrun` event as an episode starts."""
    if info.get("phase") == "start":
        events.publish("underrun", **{k: v for k, v in info.items() if k != "phase"})


class OnAir:
    """The broadcast tells it what aired (`aired`, `underrun`); the render thread and the edits tell it when the plan
    may have moved (`publish_plan`). `segment` is the clip on air; `settle` retries what the spool could not commit.
    """

    def __init__(self, events: EventBus, spool: Spool, timeline: Timeline, replanner: Replanner,
                 admission: Admission, *, fps: int, air_frame: Callable[[], int | None],
                 media_time_s: Callable[[], float], reason_of: Callable[[str], str] = lambda name: "ready") -> None:
        """air_frame: the timeline frame on air now (None before the first); media_time_s: seconds encoded so far;
        reason_of: why a renderer was put on duty (renderers/supervisor.py), told with its first frame on air."""
        self.events, self.spool, self.timeline, self.replanner, self.admission = \
            events, spool, timeline, replanner, admission
        self.fps = fps
        self._air_frame, self._media_time_s = air_frame, media_time_s
        self.log = get_logger("onair")
        self.segment: str | None = None
        self._segment_start: int | None = None  # out frame of the queue clip on air's `started`
        self._out_frame = 0  # the last frame that went out
        self._idle_announced = False
        self.reason_of = reason_of
        # whose frames are on air and the CLOCK_MONOTONIC of its first frame out (the first frame's renderer is not
        # an event): one attribute, so a lock-free reader (the probes) never pairs one renderer with another's time
        self.renderer_since: tuple[str, float] | None = None
        # a queue clip's first chunk: (cut, rendered) CLOCK_MONOTONIC, from the render thread until its `started`
        self._first_chunk: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self._unsettled: list[str] = []  # clips that finished on air but whose removal the spool could not commit
        self._settle_lock = threading.Lock()
        self.storage_errors = 0
        self._storage_failing = False
        self._scheduled: dict[str, float] = {}  # announced planned media time per clip (events scheduled/rescheduled)
        self._plan_lock = threading.Lock()
        self._names: dict[str, str] = {}  # queue clips' names (push --name), from `accepted`, for their air events
        events.subscribe(self._forget_scheduled)
        events.subscribe(self._note_name)

    @property
    def renderer(self) -> str | None:
        """Whose frames are on air (None before the first frame)."""
        since = self.renderer_since
        return None if since is None else since[0]

    # -- what aired (broadcast thread) ---------------------------------------------------------------
    def aired(self, marks: Sequence[Mark], segment_id: str | None, out_frame: int,
              renderer: str | None = None) -> None:
        """One frame went out: its marks as events, `idle` when the air first has no clip, and `renderer_changed`
        at the first frame of another renderer (None: a repeated frame of an underrun, no one's new frame)."""
        self._out_frame = out_frame
        previous = self.renderer
        if renderer is not None and renderer != previous:
            if previous is not None:
                self.events.publish("renderer_changed", renderer=renderer, previous=previous,
                                    reason=self.reason_of(renderer), frame=out_frame,
                                    media_time_s=round(out_frame / self.fps, 3))
            self.renderer_since = (renderer, time.monotonic())
        for m in marks:
            self._announce(m, out_frame)
        if segment_id is None and not self._idle_announced:
            self._idle_announced = True
            self.events.publish("idle", frame=out_frame, media_time_s=round(out_frame / self.fps, 3))
        elif segment_id is not None:
            self._idle_announced = False

    def _announce(self, m: Mark, out_frame: int) -> None:
        t = out_frame / self.fps
        # Settle before publishing: a client that saw `finished` can rely on the clip not airing again after a
        # crash (unless the spool's write failed, which is logged and retried). A cut that aired (cancel) removes
        # the clip too (the timeline may have removed it already when it stopped cutting it).
        if m.source == "queue" and m.kind in ("finished", "interrupted") and not m.requeued:
            with self._settle_lock:
                self._unsettled.append(m.segment_id)
                self._settle()
        extra: dict[str, Any] = {"requeued": True} if m.requeued else {}  # cut by play_now: it replays after it
        name = self.name_of(m.segment_id, m.source, lookup=m.kind == "started")
        if name is not None:
            extra["name"] = name
        if m.kind in ("finished", "interrupted") and not m.requeued:
            self._names.pop(m.segment_id, None)
        if m.reason is not None:
            extra["reason"] = m.reason
        times = self._first_chunk.pop(m.segment_id, None) if m.kind == "started" else None
        if times is not None:
            extra.update(cut_mono=round(times[0], 6), rendered_mono=round(times[1], 6))
        self.events.publish(m.kind, segment_id=m.segment_id, source=m.source, frame=out_frame, media_time_s=round(t, 3),
                            **extra)
        if m.kind == "started":
            self.segment = m.segment_id
            self._segment_start = out_frame if m.source == "queue" else None
        elif m.kind in ("finished", "interrupted") and self.segment == m.segment_id:
            self.segment = None
            self._segment_start = None

    def chunk_ready(self, chunk: RenderChunk, rendered_mono: float) -> None:
        """Render thread: a chunk went to the air's buffer; a queue clip starting in it keeps when the chunk was cut
        and rendered, for its `started` event (a re-cut after a re-plan overwrites them)."""
        for m in chunk.marks:
            if m.kind == "started" and m.source == "queue" and chunk.cut_mono is not None:
                self._first_chunk[m.segment_id] = (chunk.cut_mono, rendered_mono)
                while len(self._first_chunk) > 256:  # clips cancelled before they aired
                    self._first_chunk.popitem(last=False)

    def played_s(self) -> float:
        """Seconds of the queue clip on air that already aired (0 when none): the part of the queue that is gone."""
        start = self._segment_start
        return 0.0 if start is None or self.segment is None else max(0, self._out_frame + 1 - start) / self.fps

    def name_of(self, segment_id: str, source: str = "queue", lookup: bool = False) -> str | None:
        """A clip's name for people: a queue clip's `name` (push --name; with `lookup`, read from the spool for a
        clip accepted before a restart), a programme item's playlist name."""
        if source == "programme":
            rest = segment_id.removeprefix("programme:")
            return rest.rsplit(":", 1)[0] if ":" in rest else rest
        name = self._names.get(segment_id)
        if name is None and lookup:
            try:
                entry = self.spool.get(segment_id)
            except Exception:  # noqa: BLE001 - a name is decoration: never fail the air for it
                entry = None
            meta = entry.meta if entry is not None else {}
            if isinstance(meta.get("name"), str):
                name = self._names[segment_id] = meta["name"]
        return name

    def _note_name(self, e: dict[str, Any]) -> None:
        if e["type"] == "accepted" and isinstance(e.get("name"), str):
            self._names[e["segment_id"]] = e["name"]
            if len(self._names) > 100_000:  # clips dropped without airing leave their names: bound the map
                self._names.pop(next(iter(self._names)))

    # -- the spool -----------------------------------------------------------------------------------
    def settle(self) -> None:
        """Commit the finished clips' removal that failed before (housekeeping, the end of the broadcast)."""
        if self._unsettled:
            with self._settle_lock:
                self._settle()

    def _settle(self) -> None:
        """Commit the finished clips' removal; on a storage error keep them for the next try (the air goes on).

        An unsettled clip is still 'playing' in the spool, so a crash before it settles replays it: never lost.
        """
        while self._unsettled:
            try:
                self.spool.mark_finished(self._unsettled[0])
            except Exception as e:  # noqa: BLE001 - storage must never take the broadcast down
                self.storage_errors += 1
                if self.storage_errors == 1 or not self._storage_failing:
                    self.log.error("spool_write_failed", error=repr(e), unsettled=len(self._unsettled))
                self._storage_failing = True
                return
            self._unsettled.pop(0)
            if self._storage_failing:
                self._storage_failing = False
                self.log.warning("spool_write_recovered", errors=self.storage_errors)

    def storage_status(self) -> dict[str, Any]:
        return {"spool_write_errors": self.storage_errors, "unsettled_clips": len(self._unsettled)}

    # -- what will air (playout/replan.py, playout/plan.py) ------------------------------------------
    def _plan(self) -> tuple[list[Planned], float]:
        """Every buffered and the first PLAN_LIMIT pending clips' planned start, and the air's media time now."""
        with self.replanner.lock:  # the timeline and the spool as one moment: no clip taken in between
            tl = self.timeline
            air = self._air_frame()
            if air is None:
                air = tl.first_frame()
            buffered = tl.planned_starts(air)
            cut_frame, remaining = tl.frame, tl.remaining_s
            head = self.spool.pending(limit=PLAN_LIMIT)
            pending = [(e.segment_id, e.duration_s) for e in head]
            if head and head[0].interrupt:  # a play_now clip waits: it cuts what is being cut now
                remaining = 0.0
        a = self.admission
        plan = plan_on_air(fps=self.fps, air_frame=air, cut_frame=cut_frame, cut_remaining_s=remaining,
                           buffered=buffered, pending=pending, rate=a.planning_rate, head_start=a.head_start_s)
        return plan, self._media_time_s()

    def planned(self) -> tuple[list[dict[str, Any]], float]:
        """Each planned clip as a status row, and the air's media time now."""
        plan, media = self._plan()
        return [p.as_dict(media) for p in plan], media

    def plan_of(self, segment_id: str) -> dict[str, Any] | None:
        """A clip's planned on-air time (the ack of enqueue/insert/play_now); publishes the plan's changes."""
        rows = self.publish_plan()
        return next((r for r in rows if r["segment_id"] == segment_id), None)

    def publish_plan(self) -> list[dict[str, Any]]:
        """`scheduled` for a clip's first plan, `rescheduled` when its planned start moves by more than the
        threshold (playout/plan.py)."""
        with self._plan_lock:
            rows, _ = self.planned()
            for r in rows:
                sid, at = r["segment_id"], r["planned_media_time_s"]
                before = self._scheduled.get(sid)
                if before is None:
                    self.events.publish("scheduled", **r)
                elif abs(at - before) > RESCHEDULE_THRESHOLD_S:
                    self.events.publish("rescheduled", previous_media_time_s=before, **r)
                else:
                    continue
                self._scheduled[sid] = at
        return rows

    def _forget_scheduled(self, e: dict[str, Any]) -> None:
        if e["type"] in ("started", "dropped", "finished", "interrupted") and e.get("segment_id"):
            self._scheduled.pop(e["segment_id"], None)
