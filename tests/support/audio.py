"""WAV clips for pushing to a daemon in tests (and benchmarks)."""

from __future__ import annotations

import io
import wave

import numpy as np


def wav_bytes(seconds: float, freq: float = 440.0, rate: int = 16000, amplitude: float = 0.5) -> bytes:
    """A mono 16-bit WAV of a sine tone."""
    t = np.arange(int(seconds * rate)) / rate
    return mono_wav(amplitude * np.sin(2 * np.pi * freq * t), rate)


def mono_wav(x: np.ndarray, rate: int) -> bytes:
    """Float samples in [-1, 1] as a mono 16-bit WAV file."""
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()
