"""Operator drills: make any renderer slower and jittery on purpose, to prove the broadcast copes without a GPU.

`renderer.drill_slowdown = f` (> 1) stretches every render call to f x max(its measured time, the chunk's
duration): a renderer slower than real time becomes f times slower, one at or faster than real time (the still
renderer) becomes f times slower than real time. 1.0 is off. `renderer.drill_jitter_s = j` adds a uniform random 0..j s on top. Both default to off.
The added wait ends early when a re-plan abandons the chunk (`RenderChunk.abandoned`), as an engine stops at its
next denoising step.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

import numpy as np

from flashtalk_live.renderers.base import Renderer
from flashtalk_live.settings import RendererSettings
from flashtalk_live.chunks import RenderAbandoned, RenderChunk


class DrillRenderer:
    """Wraps a Renderer; render() sleeps after the real call. Everything else is the wrapped renderer's."""

    def __init__(self, inner: Any, fps: int, slowdown: float = 1.0, jitter_s: float = 0.0, *,
                 seed: int | None = None, sleep: Callable[[float], None] | None = None,
                 chunk_frames: int | None = None) -> None:
        """chunk_frames: a whole chunk's frames (video.chunk_frames), for `time_chunks` (None: not known)."""
        if slowdown < 1.0 or jitter_s < 0.0:
            raise ValueError(f"drill_slowdown must be >= 1 and drill_jitter_s >= 0, got {slowdown}, {jitter_s}")
        self.inner, self.fps, self.chunk_frames = inner, fps, chunk_frames
        self.slowdown, self.jitter_s = slowdown, jitter_s
        self._rng = random.Random(seed)
        self._sleep = sleep  # None: wait on the chunk's `abandoned` event (a test passes a recorder)
        self._inner_s: float | None = None
        self.added_s = 0.0  # total delay added, for the drill's report

    def __getattr__(self, name: str) -> Any:  # name, ready, start_session, warm_up, drift, close ...
        if name == "time_chunks" and hasattr(self.inner, "time_chunks"):
            return self._time_chunks
        return getattr(self.inner, name)

    def _time_chunks(self, n: int, timer: Callable[[Callable[[], Any]], float],
                     new_frames: int | None = None) -> list[float]:
        """The wrapped renderer's timed chunks (its `time_chunks`) as long as the drill makes its render calls, the
        jitter in full: the supervisor's rate and hang deadline start from them, and a drilled engine timed
        undrilled was abandoned as hung at its first chunk whenever drill_slowdown >= deadline_factor."""
        times = self.inner.time_chunks(n, timer) if new_frames is None else \
            self.inner.time_chunks(n, timer, new_frames)
        frames = new_frames or self.chunk_frames
        media = frames / self.fps if frames else 0.0
        return [(self.slowdown * max(t, media) if self.slowdown > 1.0 else t) + self.jitter_s for t in times]

    def abandon_s(self) -> float | None:
        """The wrapped renderer's step (the drill's own wait stops at once), else its whole last call (a renderer
        that cannot stop runs to its end)."""
        inner = getattr(self.inner, "abandon_s", None)
        return inner() if callable(inner) else self._inner_s

    def stoppable_share(self) -> float | None:
        """The wrapped renderer's share, where the drill adds nothing; else None: the drill's own wait, at the end of
        the call, stops at once, so the whole call is stoppable as far as the plan can tell."""
        if self.slowdown > 1.0 or self.jitter_s:
            return None
        inner = getattr(self.inner, "stoppable_share", None)
        return inner() if callable(inner) else None

    def render(self, chunk: RenderChunk) -> np.ndarray:
        t0 = time.monotonic()
        frames = self.inner.render(chunk)
        took = self._inner_s = time.monotonic() - t0
        # The call as a whole takes slowdown x max(own time, chunk duration); 1.0 adds nothing at all.
        extra = self.slowdown * max(took, chunk.n_frames / self.fps) - took if self.slowdown > 1.0 else 0.0
        if self.jitter_s:
            extra += self._rng.uniform(0.0, self.jitter_s)
        if extra > 0:
            if self._sleep is not None:
                self._sleep(extra)
            elif chunk.abandoned.wait(extra):
                self.added_s += time.monotonic() - t0 - took
                raise RenderAbandoned(f"drill: chunk {chunk.index} abandoned")
            self.added_s += extra
        return frames


def with_drills(renderer: Renderer, r: RendererSettings, fps: int, chunk_frames: int | None = None) -> Renderer:
    """The renderer itself when no drill is configured, else wrapped in a DrillRenderer."""
    if r.drill_slowdown == 1.0 and r.drill_jitter_s == 0.0:
        return renderer
    return DrillRenderer(renderer, fps, r.drill_slowdown, r.drill_jitter_s, chunk_frames=chunk_frames)
