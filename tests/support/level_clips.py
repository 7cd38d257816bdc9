"""Clips labelled by their level, for tests that read back which clip's audio was cut where: raw s16le stereo
48 kHz at level/64 of full scale (decodes exactly), added to a real spool."""

from __future__ import annotations

import numpy as np


def level_pcm(level: int, seconds: float) -> bytes:
    return np.full((int(round(seconds * 48000)), 2), level * 512, "<i2").tobytes()


def add_level_clip(spool, level: int, seconds: float, mode: str = "enqueue") -> str:  # noqa: ANN001
    """Add a clip of `seconds` at `level` to the spool; returns its segment id."""
    return spool.add(level_pcm(level, seconds), mode=mode, duration_s=seconds, format="pcm_s16le",
                     sample_rate=48000, channels=2).segment_id


def level_samples(level: int, samples: int) -> bytes:
    """`samples` frames of raw s16le stereo at level/64 of full scale (a streamed clip's piece)."""
    return np.full((samples, 2), level * 512, "<i2").tobytes()


class ManualClock:
    """A clock a test moves by hand (`clock.t = 6.0`): a stream's idle timeout without waiting."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
