"""A small paced broadcast loop for output tests: synthetic frames and tones at wall-clock rate."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from flashtalk_live.media.encoder import Encoder
from flashtalk_live.settings import EncoderSettings

W = H = 256
FPS = 25
RATE = 48000


def make_encoder(**kw: Any) -> Encoder:
    s = EncoderSettings(**{"preset": "ultrafast", "video_bitrate": 400_000, "audio_bitrate": 96_000, **kw})
    return Encoder(s, W, H, FPS)


def colour(second: int) -> tuple[int, int, int]:
    """A distinct colour per second of media."""
    palette = [(220, 40, 40), (40, 200, 60), (40, 80, 220), (230, 210, 40), (200, 60, 200), (40, 200, 210)]
    return palette[second % len(palette)]


def tone_hz(second: int) -> float:
    return 300.0 + 100.0 * (second % 8)


def frame_and_audio(i: int, channels: int = 2) -> tuple[np.ndarray, np.ndarray]:
    sec = i // FPS
    img = np.empty((H, W, 3), np.uint8)
    img[:] = colour(sec)
    img[: H // 8, : (i % FPS + 1) * W // FPS] = 255  # a moving bar: frames differ within a second
    n = RATE // FPS
    t = (np.arange(n) + i * n) / RATE
    a = (0.3 * np.sin(2 * np.pi * tone_hz(sec) * t)).astype(np.float32)
    return img, np.repeat(a[:, None], channels, axis=1)


@dataclass
class StreamResult:
    frames: int = 0
    packets: int = 0  # every packet handed to send(), flush included
    wall_s: float = 0.0
    send_max_s: float = 0.0
    send_times: list[float] = field(default_factory=list)
    status_max_s: float = 0.0
    action_log: list[tuple[float, str]] = field(default_factory=list)


def stream(manager: Any, encoder: Encoder, seconds: float,
           actions: dict[float, Callable[[], Any]] | None = None, watch_status: bool = False) -> StreamResult:
    """Encode and send `seconds` of media at real time. `actions` run on their own thread at wall times
    (seconds from the start) so a slow fault injection never delays the paced loop."""
    res = StreamResult()
    n = int(round(seconds * FPS))
    t0 = time.monotonic()
    stop = threading.Event()

    def run_actions() -> None:
        for at, fn in sorted((actions or {}).items()):
            if stop.wait(max(0.0, t0 + at - time.monotonic())):
                return
            fn()
            res.action_log.append((time.monotonic() - t0, getattr(fn, "__name__", "action")))

    def poll_status() -> None:
        while not stop.wait(0.1):
            ts = time.perf_counter()
            manager.status()
            res.status_max_s = max(res.status_max_s, time.perf_counter() - ts)

    threads = [threading.Thread(target=run_actions, daemon=True)]
    if watch_status:
        threads.append(threading.Thread(target=poll_status, daemon=True))
    for t in threads:
        t.start()
    try:
        for i in range(n):
            img, audio = frame_and_audio(i, encoder.channels)
            packets = encoder.encode(img, audio)
            res.packets += len(packets)
            ts = time.perf_counter()
            manager.send(packets)
            dt = time.perf_counter() - ts
            res.send_times.append(dt)
            res.send_max_s = max(res.send_max_s, dt)
            res.frames += 1
            delay = t0 + (i + 1) / FPS - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        tail = encoder.flush()
        res.packets += len(tail)
        manager.send(tail)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    res.wall_s = time.monotonic() - t0
    return res


def wait_for(pred: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def by_name(status: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in status}
