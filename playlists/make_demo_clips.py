"""Generate the example programme's clips: synthetic speech-like audio (a voiced buzz through moving formants,
cut into syllables and words), in several formats so the programme exercises the decoder.

Run from the repository root: `python playlists/make_demo_clips.py`. Deterministic (fixed seeds).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from scipy import signal

OUT = Path(__file__).with_name("clips")

# (vowel formants F1, F2) roughly for a, e, i, o, u
VOWELS = [(730, 1090), (530, 1840), (270, 2290), (570, 840), (300, 870)]


def speechlike(seconds: float, rate: int, f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    # Pitch: a slow declining intonation contour with a little vibrato.
    pitch = f0 * (1.1 - 0.2 * t / seconds) * (1 + 0.03 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 30) if k * pitch.max() < rate / 2)
    out = np.zeros(n)
    env = np.zeros(n)
    pos = int(0.15 * rate)
    while pos < n - int(0.2 * rate):
        syllables = rng.integers(1, 4)
        for _ in range(syllables):  # a word: a few syllables, each with its own vowel
            length = int(rng.uniform(0.14, 0.26) * rate)
            end = min(n, pos + length)
            f1, f2 = VOWELS[rng.integers(len(VOWELS))]
            seg = voiced[pos:end]
            for fc, bw in ((f1, 90), (f2, 120)):
                b, a = signal.iirpeak(fc, fc / bw, fs=rate)
                out[pos:end] += signal.lfilter(b, a, seg)
            env[pos:end] = np.hanning(end - pos) ** 0.5
            pos = end
        pos += int(rng.uniform(0.08, 0.3) * rate)  # gap between words
    # A touch of breath noise keeps it from sounding like a pure synth.
    out = out * env + 0.01 * rng.standard_normal(n) * env
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


def write(path: Path, x: np.ndarray, rate: int, codec: str, fmt: str, bit_rate: int | None = None) -> None:
    with av.open(str(path), "w", format=fmt) as c:
        s = c.add_stream(codec, rate=rate, layout="mono")
        if bit_rate:
            s.bit_rate = bit_rate
        if codec.startswith("pcm_s16"):
            frame_fmt, data = "s16", (x * 32767).astype(np.int16)
        else:
            frame_fmt, data = "fltp" if codec != "libopus" else "flt", x
        step = s.codec_context.frame_size or 1024
        pts = 0
        for i in range(0, len(data), step):
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(data[None, i : i + step]), format=frame_fmt, layout="mono")
            f.sample_rate, f.pts = rate, pts
            pts += f.samples
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    write(OUT / "pitch-a.m4a", speechlike(4.0, 48000, 120, 1), 48000, "aac", "mp4", 48_000)
    write(OUT / "pitch-b.ogg", speechlike(3.5, 48000, 210, 2), 48000, "libopus", "ogg", 32_000)
    write(OUT / "pitch-c.wav", speechlike(3.0, 16000, 160, 3), 16000, "pcm_s16le", "wav")
    for p in sorted(OUT.iterdir()):
        print(f"{p}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
