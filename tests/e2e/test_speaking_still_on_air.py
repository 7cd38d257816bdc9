"""Issue 21 item 4 through a real daemon process: on the embedded default (still renderer, demo portrait) the mouth
in the recording opens and closes with the speech that airs. Measured from the decoded frames and sound."""

from __future__ import annotations

import io
import wave

import av
import numpy as np
import pytest

from flashtalk_live.renderers.face import DEMO_MOUTH_BOX, DEMO_PORTRAIT_SIZE, SWAY_X, SWAY_Y, mouth_box_in_frame
from flashtalk_live.images import fit_box

from support.daemon_harness import wait_for

RATE, FPS, SIZE = 48000, 25, 256  # the harness's room: 256x256 at 25 fps


def speech_like_wav(seconds: float, seed: int = 7) -> bytes:
    """Tone bursts of syllable-like lengths (80-400 ms on, 60-300 ms off) at varying loudness, 16-bit mono WAV."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    gate = np.zeros(n, np.float32)
    i, on = 0, True
    while i < n:
        k = int(RATE * (rng.uniform(0.08, 0.4) if on else rng.uniform(0.06, 0.3)))
        gate[i:i + k] = rng.uniform(0.3, 0.6) if on else 0.0
        i, on = i + k, not on
    t = np.arange(n) / RATE
    x = gate * np.sin(2 * np.pi * 170 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def mouth_window() -> tuple[int, int, int, int]:
    """Rows and columns where the mouth's inside opens in the 256x256 frame, widened by the sway's reach."""
    iw, ih = DEMO_PORTRAIT_SIZE
    cx, cy, mw, _ = mouth_box_in_frame(DEMO_MOUTH_BOX, (iw, ih), fit_box(iw, ih, SIZE, SIZE, "cover"), "cover")
    sx, sy = round(SWAY_X * SIZE), round(SWAY_Y * SIZE)
    return int(cy) - sy, int(cy + 0.3 * mw) + sy + 1, int(cx - 0.3 * mw) - sx, int(cx + 0.3 * mw) + sx + 1


def decode(path) -> tuple[list[float], np.ndarray, np.ndarray, float]:
    """(video pts, mouth-window darkness per frame, mono audio, pts of its first sample)."""
    y0, y1, x0, x1 = mouth_window()
    pts, dark, audio, first = [], [], [], None
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.video[0]):
            luma = f.to_ndarray(format="gray")
            pts.append(float(f.pts * f.time_base))
            dark.append(255.0 - float(luma[y0:y1, x0:x1].mean()))
    with av.open(str(path)) as c:
        for f in c.decode(c.streams.audio[0]):
            if first is None:
                first = float(f.pts * f.time_base)
            audio.append(f.to_ndarray().mean(axis=0))
    return pts, np.array(dark), np.concatenate(audio).astype(np.float32), first or 0.0


@pytest.mark.timeout(180)
def test_the_mouth_in_the_recording_follows_the_speech_envelope(daemon_factory, tmp_path):
    d = daemon_factory().start()  # the embedded default: renderer.kind = "still", the demo portrait
    ev = d.events()
    seen: list[dict] = []
    with d.client() as c:
        ev.sync(c)
        sid = c.enqueue(speech_like_wav(8.0))["segment_id"]
        started = wait_for(ev, lambda e: e["type"] == "started" and e.get("segment_id") == sid, 120, seen)
        finished = wait_for(ev, lambda e: e["type"] == "finished" and e.get("segment_id") == sid, 120, seen)
    ev.close()
    assert d.stop() == 0

    pts, dark, audio, a0 = decode(tmp_path / "rec.flv")
    t0, t1 = started["media_time_s"], finished["media_time_s"]
    rms, opening = [], []
    for t, dk in zip(pts, dark):
        if t0 + 0.2 <= t < t1 - 0.2:
            s = int(round((t - a0) * RATE))
            win = audio[s:s + RATE // FPS]
            if len(win) == RATE // FPS:
                rms.append(float(np.sqrt(np.mean(win ** 2))))
                opening.append(dk)
    rms_a, open_a = np.array(rms), np.array(opening)
    assert len(rms_a) > 150, len(rms_a)
    # The mouth moves with the envelope (the renderer smooths it over a frame or two: a lag of one frame is allowed).
    r = max(np.corrcoef(rms_a[:len(rms_a) - lag], open_a[lag:])[0, 1] for lag in (0, 1, 2))
    print(f"\ncorrelation of mouth darkness with frame RMS over {len(rms_a)} frames: {r:.3f}")
    assert r > 0.6, r
    assert open_a.max() - open_a.min() > 30  # it really opens, not a flicker of compression noise
