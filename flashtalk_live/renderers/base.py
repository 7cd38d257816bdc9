"""The renderer protocol: one reference session, one chunk of audio in, that many frames out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from flashtalk_live.chunks import RenderChunk


class RendererError(RuntimeError):
    """A renderer could not produce a chunk; the daemon falls back to the still renderer."""


@runtime_checkable
class Renderer(Protocol):
    name: str

    def start_session(self, reference_image: np.ndarray, prompt: str) -> None:
        """Prepare everything that depends on the portrait (uint8 [H, W, 3], any size) and the prompt."""

    def ready(self) -> bool:
        """True once render() can be called and keep up."""

    def render(self, chunk: RenderChunk) -> np.ndarray:
        """Return uint8 [chunk.n_frames, height, width, 3] for the chunk's audio."""

    def close(self) -> None:
        """Release devices and threads."""
