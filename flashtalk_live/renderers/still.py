"""The still renderer: the reference portrait, fitted once to the output geometry, that speaks.

It is the embedded default and the fallback that keeps the room on air when the FlashTalk engine is unavailable, so
it must look alive: with `motion` on (renderer.face_motion, the default) the mouth opens with the audio of each
frame, the eyes blink and the head sways a little (renderers/face.py); off, every frame is the fitted portrait.
Either way cheap enough to run next to the encoder on one core (benchmarks/still_face.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from flashtalk_live.renderers.base import RendererError
from flashtalk_live.chunks import RenderChunk
from flashtalk_live.images import FitMode, default_portrait, fit_box, fit_image
from flashtalk_live.renderers.face import FaceAnimator, default_mouth_box, mouth_box_in_frame


class StillRenderer:
    """Renderer protocol implementation: the fitted portrait, its face moved by the speech (or not at all)."""

    name = "still"

    def __init__(self, width: int, height: int, fit: FitMode = "cover", *, motion: bool = True,
                 mouth_box: Sequence[float] | None = None, fps: int = 25) -> None:
        if width < 1 or height < 1 or width % 2 or height % 2:
            raise ValueError(f"output geometry must be positive and even for yuv420p, got {width}x{height}")
        if fit not in ("cover", "contain"):
            raise ValueError(f"fit must be 'cover' or 'contain', got {fit!r}")
        if mouth_box is not None and (len(mouth_box) != 4 or min(mouth_box[2:]) <= 0):
            raise ValueError(f"mouth_box must be [x, y, width, height] with a positive size, got {list(mouth_box)}")
        self.width, self.height, self.fit = width, height, fit
        self.motion, self.mouth_box, self.fps = motion, mouth_box, fps
        self._frame: np.ndarray | None = None
        self._face: FaceAnimator | None = None

    @classmethod
    def from_settings(cls, settings) -> "StillRenderer":  # noqa: ANN001 - flashtalk_live.settings.Settings
        v, r = settings.video, settings.renderer
        return cls(v.width, v.height, v.fit, motion=r.face_motion, mouth_box=r.mouth_box, fps=v.fps)

    def start_session(self, reference_image: np.ndarray | None = None, prompt: str = "") -> None:
        """Fit the portrait (None = the embedded demo portrait) once; every later render reuses it. The mouth box is
        in the configured portrait's pixels; another portrait of another size gets it scaled to its size."""
        image = default_portrait() if reference_image is None else reference_image
        frame = fit_image(image, self.width, self.height, self.fit)
        frame.setflags(write=False)
        self._frame = frame
        self._face = None
        if self.motion:
            ih, iw = image.shape[:2]
            box = default_mouth_box((iw, ih)) if self.mouth_box is None else \
                (self.mouth_box[0], self.mouth_box[1], self.mouth_box[2], self.mouth_box[3])
            mouth = mouth_box_in_frame(box, (iw, ih), fit_box(iw, ih, self.width, self.height, self.fit), self.fit)
            self._face = FaceAnimator(frame, mouth, self.fps)

    @property
    def frame(self) -> np.ndarray:
        if self._frame is None:
            raise RendererError("still renderer: render() before start_session()")
        return self._frame

    def ready(self) -> bool:
        return self._frame is not None

    def render(self, chunk: RenderChunk) -> np.ndarray:
        frame = self.frame
        if self._face is None:
            # A read-only broadcast view: n_frames "copies" for the price of one; the encoder only reads.
            return np.broadcast_to(frame, (chunk.n_frames, self.height, self.width, 3))
        return self._face.render(chunk.audio, chunk.n_frames, chunk.start_frame)

    def close(self) -> None:
        self._frame = None
        self._face = None
