"""Pacing: the bounded look-ahead between renderer and encoder, and the wall-clock release of one frame at a time.

The renderer thread `put`s RenderedChunks into a `Lookahead` (it blocks when the buffer is full, so a fast renderer
waits and memory stays bounded). The broadcast thread iterates a `Pacer`, which yields exactly one video frame and
exactly `samples_per_frame` audio samples per 1/fps of wall time. When no rendered frame is ready at a frame's
deadline, the pacer repeats the last frame with silence (an underrun): clip audio is delayed, never skipped or sped
up, and because every yielded item carries one frame and one frame's worth of samples, A/V cannot drift.

    for item in pacer:
        packets = encoder.encode(item.frame, item.audio); outputs.send(packets); fire(item.marks)
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np

from flashtalk_live.log import get_logger
from flashtalk_live.playout.framestore import FrameStore
from flashtalk_live.chunks import Mark, RenderChunk, RenderedChunk

Clock = Callable[[], float]
Sleep = Callable[[float], None]


class LookaheadClosed(RuntimeError):
    """put() on a closed Lookahead: the broadcast is stopping, the renderer thread should exit."""


class Lookahead:
    """A bounded FIFO of rendered chunks; `put` blocks while `max_chunks` are waiting.

    store: holds the chunks (playout/framestore.py: YUV 4:2:0, spilled to disk past a RAM bound); default: RGB in RAM.
    """

    def __init__(self, max_chunks: int, samples_per_frame: int | None = None, store: FrameStore | None = None) -> None:
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, got {max_chunks}")
        self.max_chunks = max_chunks
        self.samples_per_frame = samples_per_frame
        self._items = self.store = store if store is not None else FrameStore(compact=False)
        self._cond = threading.Condition()
        self._closed = False
        self._frames = 0
        self.high_water_chunks = 0  # most chunks ever waiting at once (the bound tests check)
        self.chunks_in = 0
        self._cut: collections.deque[str] = collections.deque(maxlen=64)  # clips cut on air: scrubbed from chunks
        self._cut_due: list[tuple[str, Literal["queue", "programme"]]] = []  # their 'interrupted' marks (id, source), for the next chunk to air
        self.frames_scrubbed = 0
        self.next_air_frame: int | None = None  # timeline frame after the last chunk taken for air
        self.chunks_discarded = 0  # dropped by re-plans (playout/replan.py)
        self.last_taken: RenderedChunk | None = None  # the chunk on air (its RGB frames: what a re-plan follows)
        # A re-plan within the chunk on air ends it early: the pacer takes the next chunk from this frame on.
        self.on_air_end: int | None = None
        self.released: int | None = None  # the timeline frame the pacer released last (set under `lock`)

    def _validate(self, item: RenderedChunk) -> None:
        chunk, frames = item.chunk, item.frames
        if frames.ndim != 4 or frames.shape[0] != chunk.n_frames or frames.shape[3] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"chunk {chunk.index}: frames must be uint8 [{chunk.n_frames}, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        if self.samples_per_frame is not None and chunk.audio.shape[0] != chunk.n_frames * self.samples_per_frame:
            raise ValueError(
                f"chunk {chunk.index}: audio has {chunk.audio.shape[0]} samples, "
                f"expected {chunk.n_frames} x {self.samples_per_frame}"
            )

    def put(self, item: RenderedChunk, timeout: float | None = None) -> bool:
        """Append a chunk, waiting while the buffer is full. False on timeout; LookaheadClosed once closed."""
        self._validate(item)
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or len(self._items) < self.max_chunks, timeout):
                return False
            if self._closed:
                raise LookaheadClosed("look-ahead buffer closed")
            urgent = not self._items  # the air takes it next: not packed (FrameStore.pack)
        item = self._items.pack(item, urgent)  # convert (and spill) off the lock: the air keeps taking meanwhile
        with self._cond:
            if self._closed:
                self._items.discard(item)
                raise LookaheadClosed("look-ahead buffer closed")
            for sid in self._cut:
                item = self._scrub(item, sid)
            self._items.append(item)
            self._frames += item.chunk.n_frames
            self.chunks_in += 1
            self.high_water_chunks = max(self.high_water_chunks, len(self._items))
            self._cond.notify_all()
            return True

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def lock(self) -> threading.Condition:
        """Held by the pacer while it picks a frame to release and by `truncate`: a re-plan never ends the chunk
        on air before a frame already released."""
        return self._cond

    def set_max_chunks(self, n: int) -> None:
        """Resize the bound (the render-ahead budget grows it while a clip waits for its head start)."""
        if n < 1:
            raise ValueError(f"max_chunks must be >= 1, got {n}")
        with self._cond:
            if n != self.max_chunks:
                self.max_chunks = n
                self._cond.notify_all()

    def get_nowait(self) -> RenderedChunk | None:
        with self._cond:
            return self._pop()

    def get(self, timeout: float | None = None) -> RenderedChunk | None:
        """Wait (real time) for a chunk; None on timeout or when closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or self._items, timeout)
            return self._pop()

    def cut(self, segment_id: str, source: Literal["queue", "programme"] = "queue") -> None:
        """Cut a clip on air (cancel, skip; `source`: queue or programme): it is silenced from the next chunk to air on, which carries its 'interrupted'.

        Every buffered chunk, and every chunk put later, loses the clip's audio and marks and its frames count as
        idle; the frames themselves and the chunks' times stay, so what follows airs at its planned time (a clip
        admitted behind it keeps its head start). The chunk on air (already taken by the pacer) airs as it is.
        """
        with self._cond:
            if segment_id in self._cut:
                return
            self._cut.append(segment_id)
            self._items.restamp(lambda it: self._scrub(it, segment_id))
            self._cut_due.append((segment_id, source))

    def _scrub(self, item: RenderedChunk, sid: str) -> RenderedChunk:
        c = item.chunk
        mine = [j for j, s in enumerate(c.frame_segments) if s == sid]
        if not mine and not any(m.segment_id == sid for m in c.marks):
            return item
        spf = c.audio.shape[0] // c.n_frames
        audio = c.audio.copy()
        for j in mine:
            audio[j * spf:(j + 1) * spf] = 0.0
        segs = [None if s == sid else s for s in c.frame_segments]
        self.frames_scrubbed += len(mine)
        chunk = dataclasses.replace(c, audio=audio, frame_segments=segs, idle=all(s is None for s in segs),
                                    marks=[m for m in c.marks if m.segment_id != sid])
        return dataclasses.replace(item, chunk=chunk)

    def truncate(self, choose: Callable[[int | None], int]) -> int:
        """Drop the buffered future from a frame on; returns that frame (a re-plan, playout/replan.py).

        `choose(next_air_frame)` picks the frame, under the same lock as the pacer's take, so no chunk can go on
        air between the choice and the drop. A frame inside a chunk (a re-plan within it) keeps that chunk's frames
        before it: a buffered chunk is cut short, the chunk on air ends there (`on_air_end`, read by the pacer).
        """
        with self._cond:
            frame = choose(self.next_air_frame)
            dropped = 0
            while self._items and self._items.newest().chunk.start_frame >= frame:  # chunks are in air order: drop from the end
                self._frames -= self._items.pop().chunk.n_frames  # the store deletes a spilled chunk's file
                dropped += 1
            if self._items and self._items.newest().chunk.end_frame > frame:
                c = self._items.newest().chunk
                self._items.trim_newest(frame - c.start_frame)
                self._frames -= c.end_frame - frame
                dropped += 1
            elif not self._items and self.last_taken is not None and self.next_air_frame is not None \
                    and self.last_taken.chunk.start_frame < frame < self.next_air_frame:
                t = self.last_taken
                self.last_taken = dataclasses.replace(t, chunk=t.chunk.head(frame - t.chunk.start_frame),
                                                      frames=t.frames[: frame - t.chunk.start_frame])
                self.on_air_end = self.next_air_frame = frame
            if dropped:
                self.chunks_discarded += dropped
                self._cond.notify_all()
            return frame

    def buffered_source(self, segment_id: str, before: int) -> Literal["queue", "programme"] | None:
        """Where a clip comes from ("queue" unless its marks say otherwise) when a buffered chunk (not the one on
        air) holds a frame of it before `before`; None when none does."""
        with self._cond:
            held = [it.chunk for it in self._items]
        if not any(segment_id in c.frame_segments[: max(0, before - c.start_frame)] for c in held):
            return None
        return next((m.source for c in held for m in c.marks if m.segment_id == segment_id), "queue")

    def chunk_at(self, frame: int) -> "RenderChunk | None":
        """The held chunk (buffered, or on air) whose frames include `frame`; None when none does."""
        with self._cond:
            for item in reversed(list(self._items)):
                if item.chunk.start_frame <= frame < item.chunk.end_frame:
                    return item.chunk
            t = self.last_taken
            if t is not None and self.next_air_frame is not None and t.chunk.start_frame <= frame < self.next_air_frame:
                return t.chunk
            return None

    def tail(self) -> RenderedChunk | None:
        """The chunk the next one put will follow on air: the newest buffered (RGB frames), else the one on air."""
        with self._cond:
            if not len(self._items):
                return self.last_taken
            newest = self._items.newest()
            frames = self._items.peek(newest)
            return None if frames is None else dataclasses.replace(newest, frames=frames)

    def _pop(self) -> RenderedChunk | None:
        if not self._items:
            return None
        item = self._items.popleft()
        self.last_taken = item
        self.on_air_end = None
        self.next_air_frame = item.chunk.end_frame
        self._frames -= item.chunk.n_frames
        if self._cut_due:
            c = item.chunk
            cuts = [Mark(c.start_frame, "interrupted", sid, src) for sid, src in self._cut_due]
            self._cut_due = []
            item = dataclasses.replace(item, chunk=dataclasses.replace(c, marks=cuts + list(c.marks)))
        self._cond.notify_all()
        return item

    def close(self) -> None:
        """Wake and refuse every producer; chunks already queued can still be taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


    def __len__(self) -> int:
        return len(self._items)

    @property
    def buffered_frames(self) -> int:
        return self._frames


@dataclass
class Tick:
    """One frame slot of the FrameClock."""

    index: int  # frames released since the clock started
    deadline: float
    lateness: float  # seconds after the deadline that the slot was released (>= 0)
    reanchored: bool


class FrameClock:
    """Release frame k at t0 + k/fps. Far behind (e.g. the process was suspended): re-anchor instead of bursting."""

    def __init__(
        self, fps: int, *, clock: Clock = time.monotonic, sleep: Sleep = time.sleep, max_behind_s: float = 1.0
    ) -> None:
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = fps
        self.clock, self.sleep = clock, sleep
        self.max_behind_s = max_behind_s
        self._anchor_t: float | None = None
        self._anchor_k = 0
        self.index = 0  # the next slot
        self.reanchors = 0
        self.lateness_max = 0.0
        self.lateness_sum = 0.0
        self.lateness_last = 0.0
        self._recent: collections.deque[float] = collections.deque(maxlen=250)

    def deadline(self, k: int) -> float:
        assert self._anchor_t is not None
        # Computed from the anchor each time (not accumulated) so float error never builds up over days.
        return self._anchor_t + (k - self._anchor_k) / self.fps

    def wait_next(self, wait: bool = True) -> Tick:
        """Sleep until the next slot's deadline and return it (wait=False: return it at once, ahead of time)."""
        k = self.index
        if self._anchor_t is None:
            self._anchor_t, self._anchor_k = self.clock(), k
        deadline = self.deadline(k)
        now = self.clock()
        if now < deadline and wait:
            self.sleep(deadline - now)
            now = self.clock()
        late = max(0.0, now - deadline)
        reanchored = False
        if late > self.max_behind_s:
            # Catching up would burst seconds of frames into the outputs at once; start a new time line instead.
            self._anchor_t, self._anchor_k = now, k
            deadline, late, reanchored = now, 0.0, True
            self.reanchors += 1
        self.index = k + 1
        self.lateness_last = late
        self.lateness_sum += late
        self.lateness_max = max(self.lateness_max, late)
        self._recent.append(late)
        return Tick(k, deadline, late, reanchored)

    @property
    def lateness_recent_max(self) -> float:
        return max(self._recent, default=0.0)

    @property
    def lateness_mean(self) -> float:
        return self.lateness_sum / self.index if self.index else 0.0


@dataclass(frozen=True)
class PacedFrame:
    """One frame slot on air: a frame, its audio, and the clip boundaries to announce with it."""

    out_frame: int  # frames released since the pacer started (the encoder's video pts)
    frame: np.ndarray  # uint8 [H, W, 3]; a view, read-only use
    audio: np.ndarray  # float32 [samples_per_frame, channels]
    marks: tuple[Mark, ...] = ()
    underrun: bool = False
    timeline_frame: int | None = None  # the timeline's global frame; None for underrun filler
    segment_id: str | None = None  # the clip on air (a held frame inside a stalled clip keeps it)
    deadline: float = 0.0
    lateness: float = 0.0
    renderer: str | None = None


class Pacer:
    """Iterator yielding one PacedFrame per 1/fps of wall time from a Lookahead (see the module docstring).

    hold_frame: shown (with silence) before the first rendered frame; if None, iteration waits for the first chunk.
    on_underrun: called with {"phase": "start"|"end", "episode", "out_frame", "frames", "where"} from the broadcast
    thread; where is "clip" while a clip is on air (between its 'started' and 'finished'/'interrupted' marks as
    aired), else "idle" (idle, programme pauses, between clips).
    clock/sleep: injectable so tests can run faster than real time.
    """

    def __init__(
        self,
        lookahead: Lookahead,
        fps: int,
        samples_per_frame: int,
        channels: int,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        hold_frame: np.ndarray | None = None,
        max_behind_s: float = 1.0,
        on_underrun: Callable[[dict[str, Any]], None] | None = None,
        first_chunk_poll_s: float = 0.1,
    ) -> None:
        if samples_per_frame <= 0 or channels <= 0:
            raise ValueError(f"samples_per_frame and channels must be > 0, got {samples_per_frame}, {channels}")
        self.lookahead = lookahead
        self.samples_per_frame, self.channels = samples_per_frame, channels
        self.clock = FrameClock(fps, clock=clock, sleep=sleep, max_behind_s=max_behind_s)
        self._silence = np.zeros((samples_per_frame, channels), np.float32)
        self._silence.setflags(write=False)
        self._last_frame = hold_frame
        self._cur: RenderedChunk | None = None
        self._pos = 0  # next frame within _cur
        self.starved_samples = 0  # producer pauses inside streamed clips that aired (RenderChunk.starved): a counter
        self._marks: dict[int, list[Mark]] = {}
        self._stop = False
        self._drain = False
        self._on_underrun = on_underrun
        self._first_poll = first_chunk_poll_s
        self._log = get_logger("pacing")
        # counters
        self.frames_out = 0
        self.audio_samples_out = 0
        self.underrun_frames = 0
        self.underrun_frames_by_where = {"clip": 0, "idle": 0}
        self.underrun_episodes = 0
        self._clip_on_air: str | None = None  # from the marks as they air
        self.chunks_out = 0
        self._in_underrun = 0  # length of the current underrun episode, 0 when none

    # -- control -----------------------------------------------------------------------------------
    def stop(self, drain: bool = True) -> None:
        """End iteration: after the chunk now on air (drain=True, SIGTERM) or at the next slot (drain=False).

        A drain releases the rest of the chunk at once, not in real time: stopping waits for its encode only (the
        outputs get up to one chunk ahead of the wall clock, which a recording or an RTMP server takes in stride)."""
        if drain:
            self._drain = True
        else:
            self._stop = True

    def _cur_frames(self) -> int:
        """Frames of the chunk on air that air (a re-plan within it may end it early)."""
        c = self._cur
        if c is None:
            return 0
        end = self.lookahead.on_air_end
        return c.chunk.n_frames if end is None else min(c.chunk.n_frames, end - c.chunk.start_frame)

    @property
    def buffered_frames(self) -> int:
        cur = max(0, self._cur_frames() - self._pos) if self._cur is not None else 0
        return cur + self.lookahead.buffered_frames

    @property
    def air_frame(self) -> int | None:
        """The timeline frame airing next (None before the first chunk)."""
        c = self._cur
        return None if c is None else c.chunk.start_frame + self._pos

    @property
    def underrun_where(self) -> str:
        """'clip' while a clip is on air (an underrun now cuts into speech), else 'idle'."""
        return "clip" if self._clip_on_air is not None else "idle"

    @property
    def in_underrun(self) -> bool:
        return self._in_underrun > 0

    def stats(self) -> dict[str, Any]:
        c = self.clock
        return {
            "frames_out": self.frames_out,
            "audio_samples_out": self.audio_samples_out,
            "chunks_out": self.chunks_out,
            "underrun_frames": self.underrun_frames,
            "underrun_episodes": self.underrun_episodes,
            "underrun_frames_clip": self.underrun_frames_by_where["clip"],
            "underrun_frames_idle": self.underrun_frames_by_where["idle"],
            "in_underrun": self.in_underrun,
            "buffered_frames": self.buffered_frames,
            "buffered_chunks": len(self.lookahead),
            "reanchors": c.reanchors,
            "lateness_last_s": c.lateness_last,
            "lateness_mean_s": c.lateness_mean,
            "lateness_max_s": c.lateness_max,
            "lateness_recent_max_s": c.lateness_recent_max,
        }

    # -- iteration ---------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[PacedFrame]:
        return self

    def _take_chunk(self) -> bool:
        item = self.lookahead.get_nowait()
        if item is None:
            return False
        self._start(item)
        return True

    def _start(self, item: RenderedChunk) -> None:
        self._cur, self._pos = item, 0
        self._marks = {}
        for m in item.chunk.marks:
            off = m.frame - item.chunk.start_frame
            # A mark outside its chunk is a timeline bug; announcing it on the nearest frame beats losing it.
            self._marks.setdefault(min(max(off, 0), item.chunk.n_frames - 1), []).append(m)
        self.chunks_out += 1

    def _cur_exhausted(self) -> bool:
        return self._cur is None or self._pos >= self._cur_frames()

    def _wait_first(self) -> None:
        """With no hold frame, the first slot waits (real time) for the first rendered chunk."""
        while self._last_frame is None and self._cur is None:
            if self._stop or self._drain:
                raise StopIteration
            item = self.lookahead.get(timeout=self._first_poll)
            if item is not None:
                self._start(item)
            elif self.lookahead.closed:
                raise StopIteration

    def __next__(self) -> PacedFrame:
        if self._stop or (self._drain and self._cur_exhausted()):
            raise StopIteration
        if self.clock.index == 0:
            self._wait_first()
        tick = self.clock.wait_next(wait=not self._drain)
        if tick.reanchored:
            self._log.warning("pacing_reanchored", out_frame=tick.index, reanchors=self.clock.reanchors)
        with self.lookahead.lock:
            if self._cur_exhausted():
                self._take_chunk()
            if not self._cur_exhausted():
                assert self._cur is not None
                self.lookahead.released = self._cur.chunk.start_frame + self._pos
        if not self._cur_exhausted():
            assert self._cur is not None
            chunk, j = self._cur.chunk, self._pos
            spf = self.samples_per_frame
            frame = self._cur.frames[j]
            audio = chunk.audio[j * spf : (j + 1) * spf]
            marks = tuple(self._marks.get(j, ()))
            if chunk.starved:
                self.starved_samples += chunk.starved.get(chunk.start_frame + j, 0)
            for m in marks:
                if m.kind == "started":
                    self._clip_on_air = m.segment_id
                elif self._clip_on_air == m.segment_id:
                    self._clip_on_air = None
            self._pos += 1
            self._last_frame = frame
            if self._in_underrun:
                self._log.info("underrun_ended", episode=self.underrun_episodes, frames=self._in_underrun)
                self._notify("end", tick.index, self._in_underrun)
                self._in_underrun = 0
            item = PacedFrame(
                tick.index, frame, audio, marks, False, chunk.start_frame + j, chunk.frame_segments[j],
                tick.deadline, tick.lateness, self._cur.renderer,
            )
        else:
            if not self._in_underrun:
                self.underrun_episodes += 1
                self._log.warning(
                    "underrun", episode=self.underrun_episodes, out_frame=tick.index,
                    note="renderer behind: holding the last frame with silence",
                )
                self._notify("start", tick.index, 0)
            self._in_underrun += 1
            self.underrun_frames += 1
            self.underrun_frames_by_where[self.underrun_where] += 1
            assert self._last_frame is not None
            # A frame held inside a clip is still that clip on air (a stall, not idle: no `idle` event, its caption
            # stays); between clips it is idle.
            item = PacedFrame(
                tick.index, self._last_frame, self._silence, (), True, None, self._clip_on_air, tick.deadline,
                tick.lateness, None,
            )
        self.frames_out += 1
        self.audio_samples_out += item.audio.shape[0]
        return item

    def _notify(self, phase: str, out_frame: int, frames: int) -> None:
        if self._on_underrun is None:
            return
        try:
            self._on_underrun(
                {"phase": phase, "episode": self.underrun_episodes, "out_frame": out_frame, "frames": frames,
                 "where": self.underrun_where}
            )
        except Exception:  # noqa: BLE001 - a listener's bug must not stop the broadcast
            self._log.exception("underrun_listener_failed")
