"""The speaking still: the portrait's mouth opens with the speech it airs, the eyes blink, the head sways a little.

What the still renderer (the embedded default and every engine's fallback) draws, so a room whose engine fails
still looks alive. Everything is a cheap numpy warp of one fitted frame (benchmarks/still_face.py: well under a
millisecond or two a frame at 448x768 on one core):

* **Mouth**: per video frame, the RMS of that frame's audio (dBFS, `FLOOR_DB`..`FULL_DB` mapped to 0..1) smoothed
  with a fast attack and a slower release, is the opening. The lower face (lower lip to chin, fading out into the
  neck and towards the cheeks) is pulled down by up to `JAW_DROP` of the mouth's width, and the gap that opens
  between the lips is filled with a dark ellipse whose height is the drop.
* **Blinks**: one per `BLINK_WINDOW_S` window, at a pseudo-random point of it derived from the window's index, so a
  re-rendered chunk blinks the same way; the lid takes the skin colour sampled just above each eye.
* **Sway**: a whole-frame shift of a few pixels along two slow sines (whole pixels: the cost of the copy only).

Where the face is: a mouth box `[x, y, width, height]` in pixels of the reference portrait (`renderer.mouth_box`;
none = the embedded demo portrait's box, scaled to the portrait's size). The eyes are placed from the mouth by
average face proportions (`EYE_DX`, `EYE_DY`). No landmark model: a CPU face-landmark library from PyPI that ships
its model (mediapipe) pulls in about 130 MB (opencv-contrib, matplotlib) for one box the operator reads off the
picture once.

Continuity: the opening carries over from the previous chunk when the next chunk follows it on the timeline; blinks
and sway are functions of the global frame index, so they never jump at a chunk boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# The demo portrait (assets/make_portrait.py, 512x768): its mouth ellipse is centred at (256, 440), 80 x 28 pixels.
DEMO_PORTRAIT_SIZE = (512, 768)
DEMO_MOUTH_BOX = (216, 426, 80, 28)

FLOOR_DB, FULL_DB = -45.0, -12.0  # frame RMS (dBFS) that leaves the mouth closed / opens it fully
ATTACK, RELEASE = 0.65, 0.3  # one-pole smoothing per frame: opens quickly, closes a little slower
JAW_DROP = 0.3  # the lower lip's drop at full opening, in mouth widths
EYE_DX, EYE_DY = 0.575, -1.31  # eye centres from the mouth centre, in mouth widths (faces: about 0.6 and 1.3)
EYE_RX, EYE_RY = 0.3, 0.17  # eye half-sizes, in mouth widths
BLINK_WINDOW_S = 4.0
BLINK_CLOSURE = (0.5, 1.0, 1.0, 0.6, 0.25)  # the lid over the frames of one blink (0 open, 1 closed)
SWAY_X, SWAY_Y = 0.006, 0.003  # sway amplitudes, fractions of the frame's width / height
SWAY_PERIOD_X_S, SWAY_PERIOD_Y_S = 7.3, 4.1
MOUTH_COLOUR = np.array([52, 18, 26], np.float32)
LASH_COLOUR = np.array([60, 40, 36], np.float32)


def mouth_box_in_frame(box: tuple[float, float, float, float], image_size: tuple[int, int],
                       fit: tuple[int, int, int, int], mode: str) -> tuple[float, float, float, float]:
    """A box in portrait pixels as (centre x, centre y, width, height) in the fitted frame (images.fit_box's
    (scaled width, scaled height, x0, y0) and mode: cover crops at x0, y0, contain pads by them)."""
    iw, ih = image_size
    sw, sh, x0, y0 = fit
    sx, sy = sw / iw, sh / ih
    x, y, w, h = box
    cx, cy = (x + w / 2) * sx, (y + h / 2) * sy
    if mode == "cover":
        cx, cy = cx - x0, cy - y0
    else:
        cx, cy = cx + x0, cy + y0
    return cx, cy, w * sx, h * sy


def default_mouth_box(image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The demo portrait's mouth box scaled to a portrait of `image_size` (width, height)."""
    fx, fy = image_size[0] / DEMO_PORTRAIT_SIZE[0], image_size[1] / DEMO_PORTRAIT_SIZE[1]
    x, y, w, h = DEMO_MOUTH_BOX
    return x * fx, y * fy, w * fx, h * fy


def frame_levels(audio: np.ndarray, n_frames: int) -> np.ndarray:
    """Per video frame, its audio's RMS mapped to 0..1 (FLOOR_DB closed .. FULL_DB open), unsmoothed."""
    if n_frames <= 0:
        return np.zeros(0, np.float32)
    x = np.asarray(audio, np.float32).reshape(n_frames, -1)
    rms = np.sqrt(np.mean(np.square(x, dtype=np.float32), axis=1, dtype=np.float64) + 1e-12)
    db = 20.0 * np.log10(rms)
    return np.clip((db - FLOOR_DB) / (FULL_DB - FLOOR_DB), 0.0, 1.0).astype(np.float32)


def smooth(levels: np.ndarray, start: float) -> np.ndarray:
    """Attack/release smoothing from `start` (the opening just before the first frame)."""
    out = np.empty_like(levels)
    v = float(start)
    for i, x in enumerate(levels.tolist()):  # at most a chunk of frames: a plain loop is cheapest
        v += (ATTACK if x > v else RELEASE) * (x - v)
        out[i] = v
    return out


def _window_hash(k: int) -> float:
    """A fixed pseudo-random number in [0, 1) for window k (the same on every render of it)."""
    return (math.sin(k * 12.9898 + 78.233) * 43758.5453) % 1.0


def blink_closure(frame: int, fps: int) -> float:
    """How closed the eyes are on global frame `frame` (0 open, 1 closed)."""
    window = max(len(BLINK_CLOSURE) + 1, round(BLINK_WINDOW_S * fps))
    k, pos = divmod(frame, window)
    lo = window // 4  # never in the first quarter: two blinks are at least a quarter window apart
    start = lo + int(_window_hash(k) * (window - lo - len(BLINK_CLOSURE)))
    j = pos - start
    return BLINK_CLOSURE[j] if 0 <= j < len(BLINK_CLOSURE) else 0.0


def sway_offset(frame: int, fps: int, width: int, height: int) -> tuple[int, int]:
    """The whole-pixel (dx, dy) shift of the picture on global frame `frame`."""
    t = frame / fps
    dx = SWAY_X * width * math.sin(2 * math.pi * t / SWAY_PERIOD_X_S)
    dy = SWAY_Y * height * math.sin(2 * math.pi * t / SWAY_PERIOD_Y_S + 1.0)
    return round(dx), round(dy)


@dataclass(frozen=True)
class _Region:
    y0: int
    y1: int
    x0: int
    x1: int


def _clip_region(y0: float, y1: float, x0: float, x1: float, h: int, w: int, margin: int) -> _Region | None:
    r = _Region(max(margin, int(math.floor(y0))), min(h - margin, int(math.ceil(y1))),
                max(margin, int(math.floor(x0))), min(w - margin, int(math.ceil(x1))))
    return r if r.y1 - r.y0 >= 2 and r.x1 - r.x0 >= 2 else None


class FaceAnimator:
    """Draws frames of one fitted portrait with the face moving; `render(audio, n_frames, start_frame)`."""

    def __init__(self, base: np.ndarray, mouth: tuple[float, float, float, float], fps: int) -> None:
        self.base = base
        self.fps = fps
        h, w = base.shape[:2]
        self.height, self.width = h, w
        self.max_dx = abs(round(SWAY_X * w))
        self.max_dy = abs(round(SWAY_Y * h))
        self._opening = 0.0
        self._next_frame: int | None = None
        mx, my, mw, mh = mouth
        self.mouth = (mx, my, mw, mh)
        # Too small to draw (a thumbnail-sized output): the face only sways and blinks, or nothing.
        self._jaw = self._jaw_setup(mx, my, mw, mh) if mw >= 6 else None
        eyes = [self._eye_setup(mx + s * EYE_DX * mw, my + EYE_DY * mw, mw) for s in (-1, 1)] if mw >= 10 else []
        self._eyes = [e for e in eyes if e is not None]

    # -- set-up: per portrait, once ---------------------------------------------------------------
    def _jaw_setup(self, mx: float, my: float, mw: float, mh: float) -> dict[str, Any] | None:
        drop = JAW_DROP * mw
        chin, neck = my + 0.7 * mw, my + 1.2 * mw
        r = _clip_region(my - 1, neck + 1, mx - 0.95 * mw, mx + 0.95 * mw, self.height, self.width, 0)
        if r is None:
            return None
        ys = np.arange(r.y0, r.y1, dtype=np.float32)
        xs = np.arange(r.x0, r.x1, dtype=np.float32)
        self._flat = self.base.reshape(-1, 3)
        lip = max(mh / 2, 1.0)
        vy = np.interp(ys, [my, my + lip, chin, neck], [0.0, 1.0, 1.0, 0.0]).astype(np.float32)
        ax = np.abs(xs - mx) / mw
        vx = np.where(ax <= 0.45, 1.0, 0.5 + 0.5 * np.cos(np.pi * np.clip((ax - 0.45) / 0.5, 0, 1))).astype(np.float32)
        weight = vy[:, None] * vx[None, :]
        # The mouth's inside: an ellipse between the upper lip (my) and the dropped lower lip, per unit drop.
        ix0, ix1 = int(max(r.x0, math.floor(mx - 0.36 * mw))), int(min(r.x1, math.ceil(mx + 0.36 * mw)))
        xx = (np.arange(ix0, ix1, dtype=np.float32) - mx) / (0.36 * mw)
        return {"r": r, "drop": drop, "weight": weight * 16.0, "ys16": ys[:, None] * 16.0,
                "cols": xs.astype(np.intp)[None, :], "my": my, "ix": (ix0 - r.x0, ix1 - r.x0),
                "xx2": np.square(xx)[None, :]}

    def _eye_setup(self, ex: float, ey: float, mw: float) -> dict[str, Any] | None:
        rx, ry = EYE_RX * mw, EYE_RY * mw
        r = _clip_region(ey - ry, ey + ry, ex - rx, ex + rx, self.height, self.width, 0)
        if r is None or ey - ry - 0.1 * mw < 0:
            return None
        ys = np.arange(r.y0, r.y1, dtype=np.float32)[:, None]
        xs = np.arange(r.x0, r.x1, dtype=np.float32)[None, :]
        inside = np.clip((1.0 - np.sqrt(((xs - ex) / rx) ** 2 + ((ys - ey) / ry) ** 2)) * rx * 0.5, 0, 1)
        s0, s1 = int(ey - ry - 0.1 * mw), max(int(ey - ry - 0.04 * mw), int(ey - ry - 0.1 * mw) + 1)
        lid = self.base[s0:s1, r.x0 + (r.x1 - r.x0) // 4: r.x1 - (r.x1 - r.x0) // 4].reshape(-1, 3).mean(axis=0)
        return {"r": r, "inside": inside.astype(np.float32)[..., None], "depth": (ys - (ey - ry)) / (2 * ry),
                "lid": lid.astype(np.float32), "lash": max(1.0, 0.03 * mw) / (2 * ry)}

    # -- per frame ---------------------------------------------------------------------------------
    def openings(self, audio: np.ndarray, n_frames: int, start_frame: int) -> np.ndarray:
        """The mouth opening (0..1) of each frame of a chunk; carries the smoothing over from the chunk before."""
        start = self._opening if self._next_frame == start_frame else 0.0
        out = smooth(frame_levels(audio, n_frames), start)
        if n_frames:
            self._opening, self._next_frame = float(out[-1]), start_frame + n_frames
        return out

    def render(self, audio: np.ndarray, n_frames: int, start_frame: int) -> np.ndarray:
        frames = np.empty((n_frames, self.height, self.width, 3), np.uint8)
        for i, opening in enumerate(self.openings(audio, n_frames, start_frame).tolist()):
            self.draw(frames[i], opening, start_frame + i)
        return frames

    def draw(self, out: np.ndarray, opening: float, frame: int) -> None:
        """One frame into `out`: the base shifted by the sway, then the mouth and the eyelids at the shifted place."""
        dx, dy = sway_offset(frame, self.fps, self.width, self.height)
        _shifted_copy(out, self.base, dx, dy)
        if self._jaw is not None and opening > 0.02:
            self._draw_mouth(out, opening, dx, dy)
        closure = blink_closure(frame, self.fps)
        if closure > 0:
            for eye in self._eyes:
                self._draw_lid(out, eye, closure, dx, dy)

    def _draw_mouth(self, out: np.ndarray, opening: float, dx: int, dy: int) -> None:
        j = self._jaw
        assert j is not None
        r: _Region = j["r"]
        d = j["drop"] * opening
        # Pull from above (the lower face moves down), interpolated between two rows in 1/16ths of a pixel, in
        # integers: half the time of float arithmetic, the same picture.
        src = (j["ys16"] - d * j["weight"]).astype(np.int32)
        np.maximum(src, 0, out=src)
        np.minimum(src, (self.height - 2) * 16, out=src)
        q = (src & 15).astype(np.uint16)[..., None]
        at = (src >> 4) * self.width + j["cols"]
        a = self._flat[at].astype(np.uint16)
        b = self._flat[at + self.width].astype(np.uint16)
        roi = (a * (16 - q) + b * q + 8) >> 4
        # The dark inside: centred between the lips, as tall as the drop, a soft one-pixel edge; only its box.
        half = max(d / 2, 0.5)
        top, bottom = max(int(j["my"]) - r.y0, 0), min(int(math.ceil(j["my"] + d)) + 1 - r.y0, roi.shape[0])
        if bottom > top:
            x0, x1 = j["ix"]
            yy = np.arange(r.y0 + top, r.y0 + bottom, dtype=np.float32)[:, None] - j["my"]
            rr = j["xx2"] + np.square((yy - half) / half)
            alpha = np.clip((1.0 - rr) * half, 0.0, 1.0)[..., None] * min(1.0, d / 2)
            inner = roi[top:bottom, x0:x1].astype(np.float32)
            inner += (MOUTH_COLOUR - inner) * alpha
            roi[top:bottom, x0:x1] = inner.astype(np.uint16)
        _paste(out, roi, r, dx, dy)

    def _draw_lid(self, out: np.ndarray, eye: dict[str, Any], closure: float, dx: int, dy: int) -> None:
        r: _Region = eye["r"]
        roi = self.base[r.y0:r.y1, r.x0:r.x1].astype(np.float32)
        edge = closure * 1.05
        cover = np.clip((edge - eye["depth"]) * 8.0, 0.0, 1.0)[..., None] * eye["inside"]
        lash = np.clip(1.0 - np.abs(eye["depth"] - edge) / eye["lash"], 0.0, 1.0)[..., None] * eye["inside"]
        roi += (eye["lid"] - roi) * cover
        roi += (LASH_COLOUR - roi) * lash
        _paste(out, roi, r, dx, dy)


def _paste(out: np.ndarray, roi: np.ndarray, r: _Region, dx: int, dy: int) -> None:
    """Write a float region of the base (rows r.y0:r.y1, columns r.x0:r.x1) at its swayed place, clipped."""
    h, w = out.shape[:2]
    y0, y1, x0, x1 = r.y0 + dy, r.y1 + dy, r.x0 + dx, r.x1 + dx
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if cy1 <= cy0 or cx1 <= cx0:
        return
    part = roi[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    if part.dtype.kind == "f":
        part = np.clip(part + 0.5, 0, 255)
    out[cy0:cy1, cx0:cx1] = part


def _shifted_copy(out: np.ndarray, base: np.ndarray, dx: int, dy: int) -> None:
    """out = base moved by (dx, dy) whole pixels, the uncovered border repeating the edge row/column."""
    if dx == 0 and dy == 0:
        np.copyto(out, base)
        return
    h, w = base.shape[:2]
    sy0, sy1 = max(-dy, 0), h - max(dy, 0)
    sx0, sx1 = max(-dx, 0), w - max(dx, 0)
    ty0, tx0 = max(dy, 0), max(dx, 0)
    out[ty0:ty0 + sy1 - sy0, tx0:tx0 + sx1 - sx0] = base[sy0:sy1, sx0:sx1]
    if dy > 0:
        out[:dy] = out[dy]
    elif dy < 0:
        out[h + dy:] = out[h + dy - 1]
    if dx > 0:
        out[:, :dx] = out[:, dx:dx + 1]
    elif dx < 0:
        out[:, w + dx:] = out[:, w + dx - 1:w + dx]
