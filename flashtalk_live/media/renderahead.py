"""The render thread's step: cut the next chunk, render it (or replay idle), measure the rate, size the look-ahead.

Render-ahead only pays off if the renderer can get ahead of the air, and a renderer slower than real time cannot
while it also renders idle live. So while the measured rate is above real time, idle chunks replay the last
live-rendered idle chunk (as a ping-pong loop, so it has no jump), and one idle chunk in `live_every`
is still rendered live (it keeps the rate measured and lets the supervisor switch or retry renderers). This is a
stopgap for the idle bank of issue 10 (model-rendered idle cached per avatar, joined to speech); it is off when
`renderer.idle_reuse` is false.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from flashtalk_live.timeline.admission import Admission
from flashtalk_live.timeline.chunk import RenderChunk, RenderedChunk


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
    """One `step()` per chunk on the render thread; `render` is the supervisor's (never raises)."""

    def __init__(self, timeline: Any, render: Callable[[RenderChunk], RenderedChunk],
                 current_renderer: Callable[[], str], admission: Admission, lookahead: Any, *,
                 fps: int, idle_reuse: bool = True) -> None:
        self.timeline, self.render = timeline, render
        self.current_renderer = current_renderer
        self.admission, self.lookahead = admission, lookahead
        self.fps = fps
        self.idle_reuse = idle_reuse
        self.idle = IdleLoop()

    def _behind(self) -> bool:
        r = self.admission.planning_rate
        return r is not None and r > 1.0

    def step(self) -> RenderedChunk:
        chunk = self.timeline.next_chunk()
        frames = None
        if self.idle_reuse and chunk.idle and self._behind():
            frames = self.idle.replay(chunk, self.current_renderer())
        if frames is not None:
            out = RenderedChunk(chunk, frames, self.idle._renderer or "idle", 0.0)
        else:
            out = self.render(chunk)
            self.admission.rate.observe(out.render_seconds, chunk.n_frames / self.fps)
            self.idle.remember(out)
        target = self.admission.target_chunks()
        if not chunk.idle:
            # A clip admitted on a long head start must not wait for that buffer to drain back to the base size:
            # while speech is being cut the bound only follows the buffer down.
            target = max(target, min(self.lookahead.max_chunks, len(self.lookahead) + 1))
        self.lookahead.set_max_chunks(target)
        return out

    def status(self) -> dict[str, Any]:
        return {**self.admission.status(), "idle_replayed_chunks": self.idle.replayed}
