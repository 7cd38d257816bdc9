"""A recording read back on the air's clock: its audio as mono samples, a tone's power per window, and
`Recording`, which places that power on out-frame numbers (the frames of the daemon's events)."""

from __future__ import annotations

import av
import numpy as np

FPS = 25  # the daemon harness's video.fps: out frames per second of air


def decode_audio_mono(path) -> tuple[np.ndarray, float, int]:
    """Decode a recording's audio to mono float; returns (samples, pts of the first sample in s, rate)."""
    with av.open(str(path)) as c:
        st = c.streams.audio[0]
        rate = st.codec_context.sample_rate
        chunks, first = [], None
        for f in c.decode(st):
            if first is None:
                first = float(f.pts * f.time_base)
            chunks.append(f.to_ndarray().mean(axis=0))
    return np.concatenate(chunks).astype(np.float32), first or 0.0, rate


def band_power(x: np.ndarray, rate: int, freq: float, win: int) -> np.ndarray:
    """Power of `freq` in consecutive windows (a Goertzel-style projection)."""
    n = len(x) // win
    t = np.arange(win) / rate
    c, s = np.cos(2 * np.pi * freq * t), np.sin(2 * np.pi * freq * t)
    frames = x[: n * win].reshape(n, win)
    return (frames @ c) ** 2 + (frames @ s) ** 2


class Recording:
    """The recording's audio on the air's clock: `power(freq, f0, f1)` per 1/fps window between out frames f0, f1.

    Calibrated on the onset of a tone whose `started` frame is known (the encoder's first pts is not out frame 0
    when the file output joins late)."""

    def __init__(self, path, freq: float, started_frame: int) -> None:
        self.x, self.first_pts, self.rate = decode_audio_mono(path)
        self.win = self.rate // FPS
        p = band_power(self.x, self.rate, freq, self.win)
        onset = int(np.flatnonzero(p > 0.25 * p.max())[0])
        self.origin = self.first_pts + onset * self.win / self.rate - started_frame / FPS
        self.ref = float(np.median(p[p > 0.25 * p.max()]))

    def power(self, freq: float, f0: float, f1: float) -> np.ndarray:
        a = int((f0 / FPS + self.origin - self.first_pts) * self.rate)
        b = int((f1 / FPS + self.origin - self.first_pts) * self.rate)
        return band_power(self.x[max(a, 0):max(b, 0)], self.rate, freq, self.win) / self.ref

    def assert_on(self, freq: float, f0: int, f1: int, what: str) -> None:
        on = self.power(freq, f0 + 3, f1 - 3)
        assert len(on) >= (f1 - f0) - 8 and on.min() > 0.2, f"{what}: the tone is not on air all along ({on.min():.3f})"

    def assert_off(self, freq: float, f0: int, f1: int, what: str) -> None:
        off = self.power(freq, f0 + 3, f1 - 3)
        assert len(off) and off.max() < 0.02, f"{what}: the tone is on air ({off.max():.3f})"
