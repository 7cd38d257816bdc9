"""The air tap and the shared preview encoder: what the console shows of the frames and sound actually sent.

The broadcast loop calls `AirTap.offer(frame, audio)` once per frame, after the frame went to the encoder; that only
stores two references (no copy, no encode), so the broadcast pays nothing per viewer. JPEGs are made lazily, on a
viewer's request, by PyAV's mjpeg encoder (already a dependency; swscale scales and converts in C, ~1-8 ms for a
720p frame on one core) and cached: at most `fps` encodes per second however many viewers ask.

The programme sound goes out as it aired: the tap also keeps the last `AUDIO_RING_S` seconds of aired audio frames
(references again), and each listener of /preview.wav reads them in order as 16-bit PCM in an endless WAV (no
encoder: a float-to-int16 conversion per listener, ~1.5 Mbit/s at 48 kHz stereo). A listener that falls further
behind than the ring skips ahead (counted in `audio_gaps`), so a slow client never holds the broadcast back.
"""

from __future__ import annotations

import collections
import struct
import threading
import time
from fractions import Fraction
from typing import Any

import av
import numpy as np


AUDIO_RING_S = 4.0  # aired audio the tap keeps for the listeners of /preview.wav
AUDIO_LEAD_S = 0.2  # a new listener starts this far back, so its player has something to buffer at once


class AirTap:
    """The latest frame and audio the broadcast loop sent to the encoder, a count of frames seen, and the last
    seconds of aired audio for the sound preview (`audio_rate` Hz, the encoder's)."""

    def __init__(self, audio_rate: int = 48000, fps: int = 25) -> None:
        self._lock = threading.Lock()
        self._frame: np.ndarray | None = None
        self._audio: np.ndarray | None = None
        self.frames = 0
        self.audio_rate = audio_rate
        self.fps = fps
        self._ring: collections.deque[tuple[int, np.ndarray]] = collections.deque(maxlen=max(1, round(AUDIO_RING_S * fps)))
        self._aired = threading.Condition(self._lock)
        self.listeners = 0
        self.audio_gaps = 0

    def offer(self, frame: np.ndarray, audio: np.ndarray) -> None:
        """On the broadcast thread: keep references only (the arrays are not written to after encoding)."""
        with self._lock:
            self._frame, self._audio = frame, audio
            self.frames += 1
            self._ring.append((self.frames, audio))
            self._aired.notify_all()

    def audio_after(self, n: int, timeout_s: float) -> tuple[int, list[np.ndarray]]:
        """The aired audio frames after frame number `n` (waiting up to `timeout_s` for one), and the last number.
        n < 0: a new listener, from AUDIO_LEAD_S back. A listener the ring has moved past skips ahead."""
        with self._lock:
            if n < 0:
                n = max(0, self.frames - round(AUDIO_LEAD_S * self.fps))
            self._aired.wait_for(lambda: self.frames > n, timeout_s)
            out = [a for k, a in self._ring if k > n]
            if self._ring and self._ring[0][0] > n + 1 and n > 0:
                self.audio_gaps += 1
            return (self._ring[-1][0] if out else n), out

    def add_listener(self, k: int) -> None:
        with self._lock:
            self.listeners += k

    def latest(self) -> tuple[int, np.ndarray | None, np.ndarray | None]:
        with self._lock:
            return self.frames, self._frame, self._audio

    def audio_levels(self) -> dict[str, Any]:
        """RMS and peak of the latest aired audio frame, per channel, in dBFS (-120 for silence)."""
        _, _, audio = self.latest()
        if audio is None or audio.size == 0:
            return {"rms_dbfs": [], "peak_dbfs": []}
        a = np.asarray(audio, np.float32).reshape(audio.shape[0], -1)
        rms = np.sqrt(np.mean(a * a, axis=0))
        peak = np.max(np.abs(a), axis=0)
        return {"rms_dbfs": [_dbfs(v) for v in rms], "peak_dbfs": [_dbfs(v) for v in peak]}


def wav_header(rate: int, channels: int) -> bytes:
    """A 16-bit PCM WAV header for a stream of unknown length (sizes at their maximum, as live WAV streams do)."""
    block = 2 * channels
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate,
                                                                                rate * block, block, 16)
            + b"data" + struct.pack("<I", 0xFFFFFFFF))


def pcm16(frames: list[np.ndarray], channels: int) -> bytes:
    """Aired float audio frames [samples, channels] as interleaved little-endian 16-bit PCM."""
    a = np.concatenate([np.asarray(f, np.float32).reshape(-1, channels) for f in frames])
    return (np.clip(a, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _dbfs(v: float) -> float:
    return round(max(-120.0, 20.0 * float(np.log10(max(float(v), 1e-6)))), 1)


class PreviewEncoder:
    """JPEGs of the air, scaled to `width`, shared by every viewer: one encode per 1/fps at most."""

    def __init__(self, tap: AirTap, fps: float, width: int) -> None:
        self.tap = tap
        self.interval_s = 1.0 / fps
        self.width = width
        self._lock = threading.Lock()
        self._ctx: Any = None  # the MJPEG encoder's av.VideoCodecContext, opened at the first frame
        self._size: tuple[int, int] | None = None
        self._jpeg: bytes | None = None
        self._jpeg_frame = -1  # tap.frames when _jpeg was made
        self._made_at = 0.0
        self.encodes = 0
        self.viewers = 0  # open /preview.mjpeg streams (reported in status)

    def jpeg(self) -> tuple[int, bytes | None]:
        """(frame number, JPEG bytes) of the latest aired frame, at most `interval_s` old unless nothing newer aired;
        None before the first frame. Thread-safe; concurrent callers share one encode."""
        with self._lock:
            now = time.monotonic()
            n, frame, _ = self.tap.latest()
            if frame is not None and n != self._jpeg_frame and (self._jpeg is None or now - self._made_at >= self.interval_s):
                self._jpeg = self._encode(frame)
                self._jpeg_frame, self._made_at = n, now
                self.encodes += 1
            return self._jpeg_frame, self._jpeg

    def _encode(self, frame: np.ndarray) -> bytes:
        h, w = frame.shape[:2]
        pw = min(self.width, w) // 2 * 2
        ph = max(2, round(h * pw / w) // 2 * 2)
        if self._ctx is None or self._size != (pw, ph):
            ctx = av.CodecContext.create("mjpeg", "w")
            ctx.width, ctx.height, ctx.pix_fmt = pw, ph, "yuvj420p"
            ctx.time_base = Fraction(1, 25)
            ctx.options = {"qmin": "2", "qmax": "8"}  # the default rate control makes a blurry single frame
            ctx.open()
            self._ctx, self._size = ctx, (pw, ph)
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        vf = vf.reformat(width=pw, height=ph, format="yuvj420p")
        vf.pts = self.encodes
        packets = self._ctx.encode(vf)
        return b"".join(bytes(p) for p in packets)

    def add_viewer(self, n: int) -> None:
        with self._lock:
            self.viewers += n

    def stats(self) -> dict[str, Any]:
        return {"encodes": self.encodes, "viewers": self.viewers, "fps": round(1.0 / self.interval_s, 2),
                "width": self._size[0] if self._size else None, "height": self._size[1] if self._size else None}
