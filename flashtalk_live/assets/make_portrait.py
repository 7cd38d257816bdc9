"""Draw the embedded demo portrait (a flat, stylised presenter) with numpy and save it as portrait.png.

Run from the repository root: `python flashtalk_live/assets/make_portrait.py`. Deterministic: same bytes every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flashtalk_live.images import encode_png

W, H = 512, 768


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    """Signed distance (pixels, approximate) to an ellipse: negative inside."""
    c, s = np.cos(angle), np.sin(angle)
    x, y = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    r = np.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    return (r - 1.0) * min(rx, ry)


def _paint(img, dist, colour, alpha=1.0):
    cover = np.clip(0.5 - dist, 0.0, 1.0)[..., None] * alpha  # one-pixel antialiased edge
    img[:] = img * (1 - cover) + np.asarray(colour, np.float32) * cover


def draw() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    img = np.empty((H, W, 3), np.float32)
    t = (yy / H)[..., None]
    img[:] = (1 - t) * np.array([52, 86, 110], np.float32) + t * np.array([24, 36, 52], np.float32)
    cx = W / 2
    skin, skin_shade = (236, 196, 168), (214, 166, 138)
    hair = (58, 40, 34)
    # torso and collar
    _paint(img, _ellipse(yy, xx, 830, cx, 260, 250), (176, 52, 64))
    _paint(img, _ellipse(yy, xx, 600, cx, 70, 64), (240, 236, 230))
    # neck
    neck = np.maximum(np.abs(xx - cx) - 46, np.maximum(yy - 610, 420 - yy))
    _paint(img, neck, skin_shade)
    _paint(img, _ellipse(yy, xx, 600, cx, 40, 50), skin_shade)
    # hair behind the head
    _paint(img, np.maximum(_ellipse(yy, xx, 320, cx, 175, 142), yy - 380), hair)
    # ears
    for side in (-1, 1):
        _paint(img, _ellipse(yy, xx, 350, cx + side * 118, 34, 20), skin_shade)
    # face
    _paint(img, _ellipse(yy, xx, 340, cx, 150, 118), skin)
    # fringe: a band of hair across the top of the face
    fringe = np.maximum(_ellipse(yy, xx, 230, cx, 90, 140), -_ellipse(yy, xx, 330, cx + 30, 110, 150))
    _paint(img, fringe, hair)
    # eyes
    for side in (-1, 1):
        ex = cx + side * 46
        _paint(img, _ellipse(yy, xx, 335, ex, 12, 22), (250, 250, 248))
        _paint(img, _ellipse(yy, xx, 336, ex, 10, 10), (72, 98, 70))
        _paint(img, _ellipse(yy, xx, 336, ex, 5, 5), (20, 20, 24))
        _paint(img, _ellipse(yy, xx, 332, ex + 3, 2.5, 2.5), (255, 255, 255))
        _paint(img, _ellipse(yy, xx, 304, ex, 5, 26, angle=side * -0.12), hair)
    # nose, cheeks, mouth
    _paint(img, _ellipse(yy, xx, 392, cx, 9, 14), skin_shade)
    for side in (-1, 1):
        _paint(img, _ellipse(yy, xx, 400, cx + side * 66, 18, 24), (240, 160, 150), alpha=0.35)
    _paint(img, _ellipse(yy, xx, 440, cx, 14, 40), (168, 64, 72))
    _paint(img, _ellipse(yy, xx, 437, cx, 4, 32), (110, 36, 44))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def main() -> None:
    out = Path(__file__).with_name("portrait.png")
    out.write_bytes(encode_png(draw()))
    print(f"{out}: {out.stat().st_size} bytes, {W}x{H}")


if __name__ == "__main__":
    main()
