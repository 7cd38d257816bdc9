"""Stand-ins only where the real part cannot run in a test: a renderer (the real one needs the 14B model or draws the
same still every chunk) that paints each chunk its own colour, counts its calls and can be slow or fail on purpose."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from flashtalk_live.chunks import RenderChunk

Colour = Callable[[int], tuple[int, int, int]]


def index_colour(index: int) -> tuple[int, int, int]:
    """A colour that changes from chunk to chunk (so consecutive chunks differ on air)."""
    return ((37 * index) % 256, 200, 50)


class PaintRenderer:
    """Paints chunk i with colour(i) after `delay_s`; raises on the chunk indices in `fail_on` and on the render()
    calls numbered in `fail_calls` (1 = its first chunk, whatever its index). `calls` counts render() calls.
    Satisfies renderers.base.Renderer."""

    def __init__(self, w: int, h: int, delay_s: float = 0.0, fail_on: set[int] | None = None, name: str = "paint",
                 colour: Colour = index_colour, fail_calls: set[int] | None = None) -> None:
        self.w, self.h, self.delay_s, self.fail_on, self.name = w, h, delay_s, fail_on or set(), name
        self.fail_calls = fail_calls or set()
        self.colour = colour
        self.calls = 0
        self.sessions = 0

    def start_session(self, reference_image: np.ndarray, prompt: str) -> None:
        self.sessions += 1

    def ready(self) -> bool:
        return True

    def render(self, chunk: RenderChunk) -> np.ndarray:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if chunk.index in self.fail_on or self.calls in self.fail_calls:
            raise RuntimeError(f"injected failure on chunk {chunk.index} (render call {self.calls})")
        return np.broadcast_to(np.array(self.colour(chunk.index), np.uint8), (chunk.n_frames, self.h, self.w, 3))

    def close(self) -> None:
        pass
