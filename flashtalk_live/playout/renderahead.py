"""The render thread's step: cut the next chunk, render it (or replay idle), measure the rate, size the look-ahead.

Render-ahead only pays off if the renderer can get ahead of the air, and a renderer slower than real time cannot
while it also renders idle live. So while the measured rate is above real time, idle chunks replay the last
live-rendered idle chunk (as a ping-pong loop, so it has no jump), and one idle chunk in `live_every`
is still rendered live (it keeps the rate measured and lets the supervisor switch or retry renderers). The idle
bank (playout/idlebank.py) takes precedence whenever it has chunks of the renderer on duty; the ping-pong loop covers
the rest (bank off, or a renderer the bank does not serve); it is off when `renderer.idle_reuse` is false.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from flashtalk_live.playout.idlebank import IdleBank
from flashtalk_live.playout.admission import Admission
from flashtalk_live.chunks import MOTION_FRAMES, RenderAbandoned, RenderChunk, RenderedChunk
from flashtalk_live.playout.ports import ChunkSource


class IdleLoop:
    """The last live-rendered idle chunk, replayed as a ping-pong loop for idle chunks.

    The loop runs f[n-2], ..., f[0], f[1], ..., f[n-1], f[n-2], ... so it continues from the live chunk's last frame
    and never shows one frame twice in a row. It is built once per live chunk (a copy of about three chunks) on the
    first replay, and every replay is a view of it; identical frames (the still renderer's) are never copied.
    """

    def __init__(self, live_every: int = 16) -> None:
        self.live_every = live_every
        self._frames: np.ndarray | None = None
        self._renderer: str | None = None
        self._loop: np.ndarray | None = None
        self._period = 0
        self._pos = 0
        self._since_live = 0
        self.replayed = 0

    def remember(self, rendered: RenderedChunk) -> None:
        if rendered.chunk.idle:
            self._frames, self._renderer, self._loop = rendered.frames, rendered.renderer, None
            self._since_live = 0

    def _build(self, f: np.ndarray) -> None:
        n = f.shape[0]
        if n < 2 or f.strides[0] == 0:  # one frame, or n views of one frame: replaying it as is is the loop
            self._loop, self._period, self._pos = f, 0, 0
            return
        period = 2 * (n - 1)
        k = np.arange(period + n) % period
        self._loop = f[np.where(k < n, k, period - k)]
        self._period, self._pos = period, n  # index n of the loop is frame n-2: right after the live chunk

    def replay(self, chunk: RenderChunk, renderer: str) -> np.ndarray | None:
        """Frames for an idle chunk, or None when it should be rendered live."""
        f = self._frames
        if f is None or self._renderer != renderer or f.shape[0] != chunk.n_frames \
                or self._since_live + 1 >= self.live_every:
            return None
        if self._loop is None:
            self._build(f)
        assert self._loop is not None
        self._since_live += 1
        self.replayed += 1
        if not self._period:
            return self._loop
        o, n = self._pos, chunk.n_frames
        self._pos = (o + n) % self._period
        return self._loop[o: o + n]

    def clear(self) -> None:
        """Forget the loop (a new avatar must not replay the old one)."""
        self._frames, self._renderer, self._loop = None, None, None


class RenderAhead:
    """One `step()` per chunk on the render thread; `render` is the supervisor's (never raises).

    With an idle bank (playout/idlebank.py) idle chunks air from the bank while the renderer that made it is the one
    on duty: loaded from disk, or built one link at a time in spare render time (the look-ahead full) and while idle
    is on air. A live chunk that does not follow the renderer's own last output (after bank idle, a bank build or
    a replay) carries the aired frames as `motion_frames`, so speech continues from what the viewer saw.
    """

    MOTION_FRAMES = MOTION_FRAMES  # (chunks.py) aired frames handed to the renderer

    def __init__(self, timeline: ChunkSource, render: Callable[[RenderChunk], RenderedChunk],
                 current_renderer: Callable[[], str], admission: Admission, lookahead: Any, *,
                 fps: int, idle_reuse: bool = True, bank: IdleBank | None = None,
                 renderer_identity: Callable[[], str | None] = lambda: None,
                 expected_rate: Callable[[], float | None] = lambda: None,
                 expected_short: Callable[[], dict[int, float]] = dict,
                 served: Callable[[str], None] = lambda name: None) -> None:
        self.timeline, self.render = timeline, render
        self.current_renderer = current_renderer
        self.admission, self.lookahead = admission, lookahead
        self.fps = fps
        self.idle_reuse = idle_reuse
        self.idle = IdleLoop()
        self.bank = bank
        self.renderer_identity = renderer_identity
        self.expected_rate = expected_rate  # the supervisor's guess for a renderer that just took over
        self.expected_short = expected_short  # ... and for its lead-in lengths (render seconds by frames)
        self.served = served  # the supervisor told that a bank chunk of a renderer goes out (it is on duty)
        self._measured: str | None = None  # the renderer whose chunks the admission's rate measures
        self._tail: RenderedChunk | None = None  # the last chunk handed to the air
        self._tail_live = False  # ... rendered live, and its renderer has drawn nothing since
        self._rebased_plan = timeline.rebase_point[0]

    def _behind(self) -> bool:
        r = self.admission.planning_rate
        return r is not None and r > 1.0

    def _spare(self) -> bool:
        return len(self.lookahead) >= self.lookahead.max_chunks

    def _build(self, bank: IdleBank) -> None:
        """Render the bank's next link (silent, conditioned on the chain or on what aired last)."""
        chunk = bank.build_chunk(None if self._tail is None else self._tail.frames[-self.MOTION_FRAMES:])
        self.timeline.render_begins(chunk)
        try:
            out = self.render(chunk)
        except RenderAbandoned:  # a re-plan wants the renderer: the link is drawn again in spare time
            self.timeline.abandoned()
            return
        self._observe(out)
        self._tail_live = False
        if out.renderer == bank.renderer_name:  # a fallback's frames (the still renderer) are not bank material
            bank.add_rendered(out.frames)

    def _observe(self, out: RenderedChunk) -> None:
        if out.renderer != self._measured:  # a fallback's or a newly loaded renderer's speed, not a blend
            self.admission.rate.restart(None)
            self._measured = out.renderer
        self.admission.observe(out.render_seconds, out.chunk.n_frames)

    def _expect(self, name: str) -> None:
        """Before a renderer's first chunk: plan with its warm-up speed, not the last renderer's (a re-plan right
        after the still renderer handed over would otherwise count on still-renderer speed)."""
        if name != self._measured:
            guess = self.expected_rate()
            if guess is not None:
                self.admission.rate.restart(guess)
                self.admission.rate.short = dict(self.expected_short())
                self._measured = name

    def _from_bank(self, chunk: RenderChunk, name: str) -> RenderedChunk | None:
        bank = self.bank
        if bank is None or not chunk.idle or not bank.active or bank.renderer_name != name \
                or chunk.n_frames > bank.chunk_frames:
            return None
        if chunk.n_frames < bank.chunk_frames:
            # A lead-in's idle (a re-plan's ramp before its clip may start): the head of a link the bank holds, at
            # no render cost, so the render thread is free when the clip is ready (a stream's ready re-plan splits
            # it); never a link drawn for it: it was planned to render in its own short time.
            if not bank.chunks:
                return None
        elif not bank.chunks or (bank.successor_missing() and not self._behind()):
            # Idle on air while the bank is incomplete: the next link is what airs. A renderer slower than real
            # time cannot draw idle live (the quality profile on an H200 held 252 frames at the take-over that
            # way): it draws the first link only and the rest in spare time, while idle joins the links it has.
            self._build(bank)
        last = None if self._tail is None else self._tail.frames[-1]
        frames = bank.serve(chunk.n_frames, last)
        if frames is None:
            return None
        self.served(name)
        return RenderedChunk(chunk, frames, name, 0.0)

    def step(self) -> RenderedChunk:
        self._follow_rebase()
        self._expect(self.current_renderer())
        bank = self.bank
        if bank is not None:
            bank.sync(self.renderer_identity())
            if not bank.load_one() and bank.wants_chunk() and self._spare():
                self._build(bank)
        chunk = self.timeline.next_chunk()
        self._follow_rebase()  # a re-plan just before this cut: the chunk follows what stays on air
        name = self.current_renderer()
        out = self._from_bank(chunk, name)
        live = False
        if out is None:
            frames = None
            if self.idle_reuse and chunk.idle and self._behind():
                frames = self.idle.replay(chunk, name)
            if frames is not None:
                out = RenderedChunk(chunk, frames, self.idle._renderer or "idle", 0.0)
            else:
                t = self._tail
                if t is not None and not (self._tail_live and t.renderer == name):
                    chunk.motion_frames = t.frames[-self.MOTION_FRAMES:]
                if chunk.abandoned.is_set():  # discarded while a bank link was drawn
                    raise RenderAbandoned(f"chunk {chunk.index} discarded before its render")
                out = self.render(chunk)
                self._observe(out)
                self.idle.remember(out)
                live = True
            if bank is not None:
                bank.interrupted()
        if chunk.plan == self.timeline.plan:  # a chunk of a discarded plan never airs
            self._tail, self._tail_live = out, live
        target = self.admission.target_chunks()
        if not chunk.idle:
            # A clip admitted on a long head start must not wait for that buffer to drain back to the base size:
            # while speech is being cut the bound only follows the buffer down.
            target = max(target, min(self.lookahead.max_chunks, len(self.lookahead) + 1))
        self.lookahead.set_max_chunks(target)
        return out

    def _follow_rebase(self) -> None:
        """A re-plan dropped the buffered future (playout/replan.py): the next chunk follows the rebase point's
        chunk on air (the newest kept chunk, or the one on air), so it is conditioned on those frames, not on what
        was dropped."""
        plan, tail = self.timeline.rebase_point
        if plan != self._rebased_plan:
            self._rebased_plan = plan
            self._tail, self._tail_live = tail, False

    def set_avatar(self, image: np.ndarray, prompt: str) -> None:
        """Called at the chunk boundary where the renderers switch: no old-avatar idle airs after it."""
        self.idle.clear()
        if self.bank is not None:
            self.bank.set_avatar(image, prompt)

    def status(self) -> dict[str, Any]:
        return {**self.admission.status(), "idle_replayed_chunks": self.idle.replayed,
                "idle_bank": None if self.bank is None else self.bank.status()}
