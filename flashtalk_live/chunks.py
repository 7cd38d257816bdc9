"""The unit of work between timeline, renderer and broadcast: one render chunk of audio and its bookkeeping."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

MODEL_AUDIO_RATE = 16_000

MOTION_FRAMES = 8  # aired frames handed to a renderer that continues from them: more than any profile's motion frames
MarkKind = Literal["started", "finished", "interrupted"]


class RenderAbandoned(Exception):
    """A renderer stopped a chunk early because a re-plan discarded it while it rendered (`RenderChunk.abandoned`):
    not a failure, nothing to air."""


@dataclass(frozen=True)
class Mark:
    """A clip boundary that must be announced on the frame where it airs."""

    frame: int  # global frame index (frames since the broadcast began)
    kind: MarkKind
    segment_id: str
    source: Literal["queue", "programme"] = "queue"
    requeued: bool = False  # 'interrupted' by play_now: the clip is back in the queue to replay after it
    reason: str | None = None  # why an 'interrupted' clip ended early when nobody cut it ("stream_timeout")


@dataclass
class RenderChunk:
    """`n_frames` new video frames' worth of audio, cut by the timeline.

    audio        float32 [n_frames * samples_per_frame, channels] at the broadcast rate (the master clock).
    model_audio  float32 [n_frames * 16000 / fps] mono 16 kHz, the same instants, for the model.
    frame_segments  which clip each frame belongs to (None = programme silence / idle filler).
    model_history   float32 16 kHz mono: the last `history_seconds` of model audio ending at this chunk's end
                    (zero-padded before the broadcast began), the rolling window the FlashTalk engine reads.
    motion_frames   uint8 [k, H, W, 3] at the output geometry: the frames that air just before this chunk, set when
                    they are not the renderer's own last output (idle bank, an edit); a renderer that continues
                    from previous frames conditions on these instead (FlashTalk: its motion context).
    abandoned       set by a re-plan that discards the chunk while it renders: a renderer may stop early by raising
                    RenderAbandoned (FlashTalk: at its next denoising step) so the new plan renders sooner.
    """

    index: int
    start_frame: int
    n_frames: int
    audio: np.ndarray
    model_audio: np.ndarray
    frame_segments: list[str | None]
    marks: list[Mark] = field(default_factory=list)
    idle: bool = False  # no queue or programme speech in this chunk
    model_history: np.ndarray | None = None
    plan: int = 0  # the re-plan epoch it was cut under (playout/replan.py drops chunks of a discarded plan)
    cut_mono: float | None = None  # CLOCK_MONOTONIC when the render thread cut it (push-to-air stages)
    motion_frames: np.ndarray | None = None
    # broadcast samples of a streamed clip's producer pauses, by global frame: counted as those frames air
    starved: dict[int, int] = field(default_factory=dict)
    abandoned: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    @property
    def end_frame(self) -> int:
        return self.start_frame + self.n_frames

    def head(self, n: int) -> "RenderChunk":
        """Its first `n` frames (a re-plan within the chunk keeps only those on air): audio, model audio, segments
        and marks cut to them."""
        if not 0 < n <= self.n_frames:
            raise ValueError(f"chunk {self.index}: cannot keep {n} of its {self.n_frames} frames")
        spf = self.audio.shape[0] // self.n_frames
        segs = self.frame_segments[:n]
        return dataclasses.replace(
            self, n_frames=n, audio=self.audio[: n * spf],
            model_audio=self.model_audio[: self.model_audio.shape[0] * n // self.n_frames], frame_segments=segs,
            marks=[m for m in self.marks if m.frame < self.start_frame + n], idle=all(s is None for s in segs),
            starved={f: k for f, k in self.starved.items() if f < self.start_frame + n})


@dataclass
class RenderedChunk:
    """A chunk after the renderer: frames ready for the encoder, with the chunk's audio riding along."""

    chunk: RenderChunk
    frames: np.ndarray  # uint8 [n_frames, H, W, 3]
    renderer: str
    render_seconds: float
