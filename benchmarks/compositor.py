"""Per-frame cost of the on-air compositor at 448x768 on one CPU core: the AI label, a logo, a product card and a
caption, steady and while the card fades. Prints a table (target: at most 2 ms per frame). CPU only, no GPU.

    OMP_NUM_THREADS=1 python benchmarks/compositor.py [--frames 500]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from flashtalk_live.compose.compositor import Compositor
from flashtalk_live.settings import LayerSettings, OverlaySettings

W, H, FPS = 448, 768, 25


def rgba_png(h: int, w: int, seed: int) -> bytes:
    import av

    rgba = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "rgba"
    frame = av.VideoFrame.from_ndarray(rgba, format="rgba")
    return b"".join(bytes(p) for p in list(ctx.encode(frame)) + list(ctx.encode(None)))


def timed(c: Compositor, frames: np.ndarray, n0: int, n: int, sid: str | None) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        c.compose(frames[i % len(frames)], n0 + i, sid)
        out[i] = time.perf_counter() - t
    return out * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=500)
    a = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    tmp = tempfile.mkdtemp()
    logo = os.path.join(tmp, "logo.png")
    with open(logo, "wb") as f:
        f.write(rgba_png(96, 96, 1))
    s = OverlaySettings(layers=[LayerSettings(name="logo", image=logo, anchor="top_left", opacity=0.9)])
    c = Compositor(s, W, H, FPS)
    c.set("card", image=rgba_png(260, 200, 2), anchor="bottom_left", margin=(16, 220), fade_s=0.5)
    text = "大家好，欢迎来到直播间！今天给大家带来一款非常好用的保温杯，买一送一，只限今天，喜欢的朋友赶快下单。"
    c.note_clip("clip", text, 3600.0)
    c.prepare(["clip"])
    frames = np.random.default_rng(0).integers(0, 256, (8, H, W, 3), dtype=np.uint8)
    bare = Compositor(OverlaySettings(ai_label_enabled=False), W, H, FPS)
    rows = [("no layers (returns the frame)", timed(bare, frames, 0, a.frames, None))]
    rows.append(("AI label + logo", timed(c, frames, 0, a.frames, None)))
    c.show("card")
    rows.append(("card fading in (first 12 frames)", timed(c, frames, a.frames, 12, None)))
    rows.append(("label + logo + card + caption", timed(c, frames, a.frames + 12, a.frames, "clip")))
    print(f"compositor at {W}x{H}, one core, {a.frames} frames per row (ms per frame)")
    print(f"{'layers':36s} {'mean':>7s} {'p50':>7s} {'p99':>7s} {'max':>7s}")
    for name, ms in rows:
        print(f"{name:36s} {ms.mean():7.3f} {np.percentile(ms, 50):7.3f} {np.percentile(ms, 99):7.3f} {ms.max():7.3f}")
    print("target: <= 2 ms per frame")


if __name__ == "__main__":
    main()
