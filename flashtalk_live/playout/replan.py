"""Edits act on air time: discard the buffered (rendered, not aired) future from the first affected frame and re-cut it.

The render thread cuts chunks through `Replanner.next_chunk()` and hands rendered ones to `put()`; a control command
that changes the plan runs its spool change inside `editing(command, segment_id)`, which first re-plans:

* `play_now`, and `cancel` of the clip on air (`skip` too: a programme item on air is cut the same way): from the
  first frame not on air that can be rendered again before it is needed (the render in flight finishes, or stops
  if the re-plan discards it, then one chunk at the planning rate; at least the due margin ahead of the air). That
  frame may lie inside a chunk, buffered or on air (`_split`, `within_chunk`): the chunk keeps its frames before
  it, so the new clip airs within the render in flight plus one chunk render. A cancelled clip is also silenced on
  air at once (`Lookahead.cut`): its cut airs with the next chunk, at most one chunk after the command, and what is
  kept of it is silent.
* `insert`, `clear`, `cancel` of any other clip, `move`: from the first buffered chunk (or that frame inside it) that
  holds anything besides the clip on air, which keeps its buffered frames (and so its head start).
* `enqueue`: from the first buffered chunk (or that frame inside it) that holds anything but queue clips and the
  clip on air (idle, a pause, a programme item not on air: the one on air plays on to its end), so a clip pushed into an idle room does not wait behind buffered idle; with queue clips
  buffered to the end of the look-ahead there is nothing to re-plan. Never before a queue clip cut already (the new
  clip goes after it): re-planning the idle a clip waiting for its head start was cut behind discarded that clip's
  rendered chunks and made it wait again, at every enqueue while the renderer was slow.

Re-planning drops those chunks from the look-ahead (under its lock, so none goes on air meanwhile), rewinds the
timeline (clips taken for them go back to the queue's head; playout/timeline.py) and bumps the plan epoch; a chunk
being rendered from the old plan is abandoned (`RenderChunk.abandoned`: the renderer on duty stops it at its next
step of `abandon_s()`: FlashTalk's denoising step, or N + 1 DiT blocks with `model.abandon_run_ahead_blocks`) or
dropped when it is put; an idle-bank link being drawn in
spare time is abandoned by any re-plan. Holding the lock across the spool change means the render thread cannot
cut between the re-plan and the edit: buffered clips are pending again when the edit sees the queue, so they are
ordered, cancelled and cleared exactly like pending clips.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from flashtalk_live.log import get_logger
from flashtalk_live.chunks import RenderChunk, RenderedChunk
from flashtalk_live.playout.timeline import Keep, Split

FROM_AIR = frozenset({"play_now"})  # commands that re-plan from the air boundary
# The re-plan point lies this far beyond the first frame a chunk cut now could reach in time: the cut comes a moment
# after the re-plan (the render thread wakes, the air moves on a frame) and admission checks the head start then.
# Without it a push that lost that race to one frame of air waited a whole chunk more (on an H100 at 6b4d463, 3 of
# 10 enqueues into an idle room and 2 of 9 play_now aired about 1 s later than the others).
CUT_SLACK_S = 0.06


class Replanner:
    def __init__(self, timeline: Any, lookahead: Any, *, poll_s: float = 0.02, fps: int = 25,
                 rate: Callable[[], float | None] = lambda: None,
                 render_s: Callable[[int], float | None] | None = None,
                 first_chunks_s: Callable[[], float | None] | None = None,
                 abandon_s: Callable[[], float | None] = lambda: None,
                 stoppable_share: Callable[[], float | None] = lambda: None, render_margin: float = 0.0,
                 air_frame: Callable[[], int | None] = lambda: None,
                 buffered_s: Callable[[], float] = lambda: 0.0, due_margin_s: float = 0.2,
                 within_chunk: bool = True, min_kept_frames: int = 8,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not timeline.replannable:
            raise ValueError("a Replanner needs a Timeline built with replannable=True (it keeps snapshots)")
        self.timeline, self.lookahead = timeline, lookahead
        self.fps, self.rate, self.air_frame = fps, rate, air_frame
        # Planning seconds to render a chunk of n frames (admission.chunk_render_s: a lead-in chunk has its own);
        # default: the rate times the chunk's air time.
        self.render_s = render_s or self._at_rate
        # ... and the head start the first chunks of a re-plan need (with a lead-in: its ramp, `Timeline.rewind`).
        self.first_chunks_s = first_chunks_s or (lambda: self.render_s(timeline.chunk_frames))
        # What the re-cut future follows on air, by plan: the render thread reads it (playout/renderahead.py
        # conditions the next chunk on it) instead of being called from the control thread.
        self.rebase_point: tuple[int, RenderedChunk | None] = (0, None)
        # buffered_s: seconds rendered ahead of the air (the pacer's); a streamed clip's chunk waits for its audio
        # only while that exceeds one chunk's render plus due_margin_s (0.0 by default: never waits).
        self.buffered_s, self.due_margin_s = buffered_s, due_margin_s
        # (monotonic start, the chunk in flight, whether it is spare work: an idle-bank link); `_cut` is the chunk
        # the render thread cut last, still being drawn while a bank link renders before it.
        self._rendering: tuple[float, RenderChunk, bool] | None = None
        self._cut: RenderChunk | None = None
        self.abandon_s = abandon_s  # the renderer on duty's step: it stops an abandoned chunk at the next (None: never)
        self.stoppable_share = stoppable_share  # ... within this share of a chunk's render (None: all of it)
        self.render_margin = render_margin  # the planning margin in `render_s` (the admission's): the share is of
        # the render's own time
        self.clock = clock  # times the render in flight (CLOCK_MONOTONIC)
        self.renders_abandoned = 0
        self.lock = threading.RLock()
        self.plan = 0
        self._voids: collections.deque[tuple[int, int]] = collections.deque(maxlen=256)  # (plan, from_frame)
        self.poll_s = poll_s
        self.replans = 0
        self.chunks_dropped_in_flight = 0
        self.last: dict[str, Any] | None = None
        # Re-plan from any frame, not only a chunk boundary (`_split`); a chunk cut short keeps at least
        # min_kept_frames (the aired frames the re-cut future is conditioned on: RenderAhead.MOTION_FRAMES).
        self.within_chunk, self.min_kept_frames = within_chunk, min_kept_frames
        self.splits = 0
        self._log = get_logger("replan")

    def _at_rate(self, frames: int) -> float | None:
        r = self.rate()
        return None if r is None else r * frames / self.fps

    # -- the render thread --------------------------------------------------------------------------
    def next_chunk(self) -> RenderChunk:
        self._await_stream()
        with self.lock:
            on_air = self.lookahead.last_taken  # its snapshot stays: a re-plan may cut it short (`_split`)
            self.timeline.forget_before(None if on_air is None else on_air.chunk.start_frame)
            chunk = self.timeline.next_chunk()
            chunk.plan = self.plan
            chunk.cut_mono = time.monotonic()
            self._rendering, self._cut = (self.clock(), chunk, False), chunk
            return chunk

    def render_begins(self, chunk: RenderChunk) -> None:
        """An idle-bank link is being drawn (playout/renderahead.py): it is the render in flight until the next cut;
        a re-plan abandons it."""
        with self.lock:
            self._rendering = (self.clock(), chunk, True)

    def abandoned(self) -> None:
        """The renderer stopped the chunk in flight early: nothing renders until the next cut."""
        with self.lock:
            self._rendering = None
            self.renders_abandoned += 1

    def _await_stream(self) -> None:
        """A streamed clip being cut whose next chunk's audio has not all arrived: wait for it while the air does
        not need the chunk yet (buffered ahead beyond one chunk's render plus `due_margin_s`); then cut what is
        there (timeline: the rest is a pause in the clip). The render counted is the longer of the next chunk's and
        a whole one's: a live chunk's stream may close or jump ahead meanwhile, and its next chunk is then whole.
        Outside the lock: edits go on meanwhile."""
        tl = self.timeline
        while not self.lookahead.closed and tl.stream_shortfall() > 0:
            render = max(self.render_s(tl.next_frames) or 0.0, self.render_s(tl.chunk_frames) or 0.0)
            slack = self.buffered_s() - render - self.due_margin_s
            if slack <= 0:
                return
            tl.wait_stream(min(slack, 0.05))

    def _stale(self, chunk: RenderChunk) -> bool:
        return any(p > chunk.plan and chunk.start_frame >= f for p, f in self._voids)

    def put(self, item: RenderedChunk, stop: threading.Event) -> bool:
        """Put a rendered chunk in the look-ahead, waiting for room; False if a re-plan discarded it or on stop."""
        while not stop.is_set():
            with self.lock:
                self._rendering = None
                if self._stale(item.chunk):
                    self.chunks_dropped_in_flight += 1
                    return False
                if self.lookahead.put(item, timeout=0):
                    return True
            time.sleep(self.poll_s)  # full: the pacer frees a slot once a chunk airs
        return False

    # -- control commands ---------------------------------------------------------------------------
    def replan(self, command: str, segment_id: str | None = None) -> int | None:
        """Discard the buffered future from the first frame `command` affects; returns that frame (None: nothing).

        "open" (a stream opened, no audio yet) re-plans as "enqueue" only where a programme clip is cut to start
        after the air, which the stream would then wait behind: buffered idle stays, held chunks its ready re-plan
        can split, where a re-plan now would cut a ramp of live idle whose render that re-plan could not stop (an
        H100 at cf3863e: every 4x stream waited behind one 20-frame idle chunk, 1.97 s p50 first byte). Where it
        re-plans, the re-cut future starts with whole chunks, not the lead-in's ramp: its idle is the bank's (no
        render), held at once for the ready re-plan to split; a ramp of live idle there made every 4x stream of a
        room with a programme wait behind one (an H100 at 88649ed: 1.88 s p50 first byte)."""
        with self.lock:
            tl = self.timeline
            ramp = True
            if command == "open":
                if not tl.programme_ahead(self.air_frame()):
                    return None
                command, ramp = "enqueue", False

            cut_on_air: list[tuple[str, str]] = []
            split: list[Split] = []

            def choose(air: int | None) -> int:
                on_air = tl.clip_at(air)
                if command == "cancel" and segment_id is not None and segment_id == on_air:
                    cut_on_air.append((segment_id, tl.source_at(air) or "queue"))
                keep: Keep
                if command in FROM_AIR or cut_on_air:
                    keep = "nothing"
                else:
                    keep = "queue" if command == "enqueue" else "on_air"
                not_before = self._renderable_from(air, ramp=ramp)
                if keep == "queue":  # the new clip goes after every queue clip cut already: those stay as cut
                    not_before = max(not_before, tl.last_queue_chunk(air))
                boundary = tl.replan_point(air, keep, not_before=not_before)
                within = self._split(not_before, boundary, keep, on_air)
                if within is not None:
                    split.append(within)
                frame = boundary if within is None else within.frame
                if command == "cancel" and segment_id is not None and not cut_on_air:
                    # A clip that starts before the re-plan point is on air as far as edits are concerned: its
                    # buffered frames stay, so it is silenced on air as the clip on air is.
                    source = self.lookahead.buffered_source(segment_id, frame)
                    if source is not None:
                        cut_on_air.append((segment_id, source))
                return frame

            frame = self.lookahead.truncate(choose)
            for sid, source in cut_on_air:
                self.lookahead.cut(sid, source)
                tl.cut(sid)
            if frame >= tl.frame:
                return None
            self._abandon_from(frame)
            undone = tl.rewind(frame, split[0] if split else None, ramp=ramp)
            self.splits += bool(split)
            self.plan += 1
            self.rebase_point = (self.plan, self.lookahead.tail())
            self._voids.append((self.plan, frame))
            self.replans += 1
            self.last = {"command": command, "from_frame": frame, "within_chunk": bool(split),
                         "returned": [a for op, a in undone if op == "take"]}
            self._log.info("replanned", command=command, from_frame=frame, plan=self.plan,
                           within_chunk=bool(split), returned_to_queue=self.last["returned"])
            return frame

    def _split(self, not_before: int, boundary: int, keep: Keep, on_air: str | None) -> Split | None:
        """A re-plan from a frame inside a held chunk, earlier than `boundary`: the first frame that can still be
        rendered in time (`not_before`), the chunk it falls in keeping at least `min_kept_frames`. Only where the
        timeline, cut again up to that frame, gives back exactly what was rendered (audio and clips per frame), so
        the kept frames and the re-cut future join without a seam; else None (the boundary)."""
        now = self.air_frame()
        if not self.within_chunk or now is None:
            return None
        # The pacer cannot release a frame meanwhile (`truncate` holds the look-ahead's lock); a renderer much
        # faster than real time still needs the due margin to hand over the first chunk of the re-cut future.
        released = self.lookahead.released
        now = max(now, -1 if released is None else released + 1)
        frame = max(not_before, now + max(2, math.ceil(self.due_margin_s * self.fps)))
        held = self.lookahead.chunk_at(frame)
        if held is None:
            return None
        frame = max(frame, held.start_frame + self.min_kept_frames)
        if frame >= min(boundary, held.end_frame):
            return None
        within = self.timeline.split_at(frame, keep, on_air)
        if within is None:
            return None
        k = frame - held.start_frame
        if within.chunk.frame_segments != held.frame_segments[:k] or \
                not np.array_equal(within.chunk.audio, held.audio[: within.chunk.audio.shape[0]]):
            self._log.debug("replan_split_mismatch", frame=frame, chunk=held.index)
            return None
        return within

    def _abandon_from(self, frame: int) -> None:
        """The re-plan discards from `frame`: stop the render in flight when it is spare work or a discarded chunk,
        and the cut chunk a bank link is drawn before. Not before the render rate is known: the chunk in flight
        is then its first measure, which admission needs (a clip's head start)."""
        if self.rate() is None:
            return
        doomed = [c for c in (self._cut,) if c is not None and c.start_frame >= frame]
        if self._rendering is not None and self._rendering[2]:
            doomed.append(self._rendering[1])
        for c in doomed:
            if not c.abandoned.is_set():
                c.abandoned.set()

    def _renderable_from(self, air: int | None, *, ramp: bool = True) -> int:
        """The first timeline frame a chunk cut now could still air on time: the render in flight ends (or stops
        within the renderer's `abandon_s`: a frame it reaches that way discards it), then the re-plan's first chunks
        render (`first_chunks_s`: a whole chunk at the planning rate, or a lead-in's ramp; without `ramp` a whole
        chunk; no wait with a renderer much faster than real time), plus `CUT_SLACK_S`."""
        now = self.air_frame()
        if now is None:
            return 0
        need = 0.0
        if self._rendering is not None:
            t0, chunk, _ = self._rendering
            elapsed = self.clock() - t0
            planned = self.render_s(chunk.n_frames) or 0.0
            need += max(0.0, planned - elapsed)
            step, share = self.abandon_s(), self.stoppable_share()
            denoising = share is None or elapsed < share * planned / (1.0 + self.render_margin)
            if step is not None and step > 0 and denoising:
                # The render stops at its next step boundary (steps of `step` s from its start) while it denoises
                # (the renderer's stoppable share of its own time); past that it runs to its end. Abandoning
                # pays only where the chunk in flight lies at or after the frame this gives (a bank link: always);
                # a later frame is past the timeline's end: nothing is re-planned then.
                need = min(need, step - elapsed % step)
        first = self.first_chunks_s() if ramp else self.render_s(self.timeline.chunk_frames)
        need += (first or 0.0) + CUT_SLACK_S
        return now + math.ceil(need * self.fps - 1e-9)  # 1.0 x 28 / 25 x 25 is 28.000000000000004

    @contextmanager
    def editing(self, command: str, segment_id: str | None = None) -> Iterator[None]:
        """Re-plan for `command`, then run the caller's spool change before the render thread cuts again."""
        with self.lock:
            self.replan(command, segment_id)
            yield

    def status(self) -> dict[str, Any]:
        return {"plan": self.plan, "replans": self.replans, "replans_within_chunk": self.splits,
                "renders_abandoned": self.renders_abandoned,
                "chunks_discarded": self.lookahead.chunks_discarded,
                "chunks_dropped_in_flight": self.chunks_dropped_in_flight, "last_replan": self.last}
