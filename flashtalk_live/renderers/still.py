"""The still renderer: the reference portrait, fitted once to the output geometry, shown for every frame.

It is the embedded default and the fallback that keeps the room on air when the FlashTalk engine is unavailable.
"""

from __future__ import annotations

import numpy as np

from flashtalk_live.renderers.base import RendererError
from flashtalk_live.images import FitMode, default_portrait, fit_image
from flashtalk_live.chunks import RenderChunk


class StillRenderer:
    """Renderer protocol implementation that never moves: cheap enough to run next to the encoder on one core."""

    name = "still"

    def __init__(self, width: int, height: int, fit: FitMode = "cover") -> None:
        if width < 1 or height < 1 or width % 2 or height % 2:
            raise ValueError(f"output geometry must be positive and even for yuv420p, got {width}x{height}")
        if fit not in ("cover", "contain"):
            raise ValueError(f"fit must be 'cover' or 'contain', got {fit!r}")
        self.width, self.height, self.fit = width, height, fit
        self._frame: np.ndarray | None = None

    @classmethod
    def from_settings(cls, settings) -> "StillRenderer":  # noqa: ANN001 - flashtalk_live.settings.Settings
        return cls(settings.video.width, settings.video.height, settings.video.fit)

    def start_session(self, reference_image: np.ndarray | None = None, prompt: str = "") -> None:
        """Fit the portrait (None = the embedded demo portrait) once; every later render reuses it."""
        image = default_portrait() if reference_image is None else reference_image
        frame = fit_image(image, self.width, self.height, self.fit)
        frame.setflags(write=False)
        self._frame = frame

    @property
    def frame(self) -> np.ndarray:
        if self._frame is None:
            raise RendererError("still renderer: render() before start_session()")
        return self._frame

    def ready(self) -> bool:
        return self._frame is not None

    def render(self, chunk: RenderChunk) -> np.ndarray:
        # A read-only broadcast view: n_frames "copies" for the price of one; the encoder only reads.
        return np.broadcast_to(self.frame, (chunk.n_frames, self.height, self.width, 3))

    def close(self) -> None:
        self._frame = None
