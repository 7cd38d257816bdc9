"""RenderChunk builder: silent or seeded chunks of the broadcast geometry for renderer tests."""

from __future__ import annotations

import numpy as np

from flashtalk_live.chunks import MODEL_AUDIO_RATE, Mark, RenderChunk

FPS, RATE, CHANNELS = 25, 48000, 2


def render_chunk(index: int = 0, n_frames: int = 28, *, start_frame: int | None = None, fps: int = FPS,
                 rate: int = RATE, channels: int = CHANNELS, model_audio: np.ndarray | None = None,
                 seed: int | None = None, segments: list[str | None] | None = None, marks: list[Mark] | None = None,
                 idle: bool = False, history_samples: int = 0) -> RenderChunk:
    """Chunk `index` of n_frames frames: silent broadcast audio; model audio given, seeded noise (seed), or silent;
    `history_samples` > 0 adds a zero model_history window ending with this chunk's model audio."""
    n_model = n_frames * MODEL_AUDIO_RATE // fps
    if model_audio is None:
        model_audio = (np.zeros(n_model, np.float32) if seed is None
                       else (0.1 * np.random.default_rng(seed).standard_normal(n_model)).astype(np.float32))
    history = None
    if history_samples:
        history = np.zeros(history_samples, np.float32)
        history[-model_audio.shape[0]:] = model_audio
    return RenderChunk(index, n_frames * index if start_frame is None else start_frame, n_frames,
                       np.zeros((n_frames * rate // fps, channels), np.float32), model_audio,
                       [None] * n_frames if segments is None else segments, marks or [], idle=idle,
                       model_history=history)

