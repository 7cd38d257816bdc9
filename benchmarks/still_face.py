"""Per-frame cost of the speaking still renderer (issue 21 item 4) on one CPU core, at several output sizes.

    python benchmarks/still_face.py               # 256x256, 448x768 (the default room), 720x1280, 1080x1920
    python benchmarks/still_face.py --chunks 40 --size 448x768

The process is pinned to one core (sched_setaffinity) and numpy's thread pools to one thread, so the number is what
one core pays. For each size: StillRenderer.render() of whole 28-frame chunks (the daemon's call, frames allocated
included) with face motion off (the old motionless portrait: a broadcast view), on with silence (blinks and sway
only) and on with speech-like audio (tone bursts: the mouth moves every frame). Prints the median and max
milliseconds per frame over the chunks and the share of the 40 ms a frame has at 25 fps.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from flashtalk_live.renderers.still import StillRenderer  # noqa: E402
from support.chunks import render_chunk  # noqa: E402

FPS, CF, RATE = 25, 28, 48000


def speech_like(n_samples: int, offset: int) -> np.ndarray:
    """Tone bursts at a syllable rate (about 4 Hz), as [samples, 2] float32."""
    t = (np.arange(n_samples) + offset) / RATE
    env = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 0.5
    return np.repeat((0.3 * env * np.sin(2 * np.pi * 180.0 * t)).astype(np.float32)[:, None], 2, axis=1)


def measure(width: int, height: int, motion: bool, speech: bool, chunks: int) -> list[float]:
    r = StillRenderer(width, height, "cover", motion=motion, fps=FPS)
    r.start_session(None, "")
    per_frame = []
    for i in range(chunks + 1):
        c = render_chunk(i, CF)
        if speech:
            c.audio[:] = speech_like(c.audio.shape[0], i * c.audio.shape[0])
        t0 = time.perf_counter()
        frames = r.render(c)
        np.asarray(frames[-1]).sum(dtype=np.uint64)  # touch the last frame: a lazy result would not count
        dt = time.perf_counter() - t0
        if i:  # the first chunk warms caches
            per_frame.append(dt / CF * 1000)
    return per_frame


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--size", action="append", help="WIDTHxHEIGHT (repeatable)")
    a = ap.parse_args()
    sizes = a.size or ["256x256", "448x768", "720x1280", "1080x1920"]
    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"# machine: {platform.node()}, {cpu}, {os.cpu_count()} cores (pinned to core {core}); "
          f"python {platform.python_version()}, numpy {np.__version__}; commit {commit}")
    print(f"# StillRenderer.render() of {CF}-frame chunks, {a.chunks} chunks per row; ms per frame; budget 40 ms at 25 fps")
    print(f"{'size':>10} {'face':>14} {'median_ms':>10} {'max_ms':>8} {'budget_%':>9}")
    for size in sizes:
        w, h = (int(x) for x in size.split("x"))
        for label, motion, speech in (("off", False, False), ("on, silence", True, False), ("on, speech", True, True)):
            ms = measure(w, h, motion, speech, a.chunks)
            med = statistics.median(ms)
            print(f"{size:>10} {label:>14} {med:10.3f} {max(ms):8.3f} {100 * med / (1000 / FPS):9.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
