"""The speaking still (renderers/face.py through StillRenderer): the mouth follows the audio, silence keeps it shut,
blinks and sway are functions of the frame index, the opening carries across chunks, the mouth box is configurable."""

from __future__ import annotations

import numpy as np
import pytest

from flashtalk_live.renderers.face import (
    DEMO_MOUTH_BOX,
    DEMO_PORTRAIT_SIZE,
    blink_closure,
    frame_levels,
    mouth_box_in_frame,
    sway_offset,
)
from flashtalk_live.images import default_portrait, fit_box, fit_image
from flashtalk_live.renderers.still import StillRenderer
from flashtalk_live.settings import ConfigError
from flashtalk_live.config import load_settings

from support.chunks import render_chunk

W, H, FPS, SPF = 448, 768, 25, 1920


def mouth_rows(r: StillRenderer):
    """The fitted frame's mouth centre and size, and a window over the gap that opens below the upper lip."""
    iw, ih = DEMO_PORTRAIT_SIZE
    cx, cy, mw, mh = mouth_box_in_frame(DEMO_MOUTH_BOX, (iw, ih), fit_box(iw, ih, r.width, r.height, r.fit), r.fit)
    return int(cy), int(cy + 0.3 * mw), int(cx - 0.25 * mw), int(cx + 0.25 * mw)


def darkness(frame: np.ndarray, window, k: int | None = None) -> float:
    """255 less the mean level in the window (moved with the sway of global frame k when given)."""
    y0, y1, x0, x1 = window
    dx, dy = (0, 0) if k is None else sway_offset(k, FPS, frame.shape[1], frame.shape[0])
    return 255.0 - float(frame[y0 + dy:y1 + dy, x0 + dx:x1 + dx].astype(np.float32).mean())


def bursts(n_frames: int, on: list[bool], amp: float = 0.3) -> np.ndarray:
    """Broadcast audio of n_frames: a 180 Hz tone on the frames where `on` is true, silence elsewhere."""
    t = np.arange(n_frames * SPF) / 48000
    gate = np.repeat(np.asarray(on, np.float32), SPF)
    return np.repeat((amp * gate * np.sin(2 * np.pi * 180 * t)).astype(np.float32)[:, None], 2, axis=1)


def test_the_mouth_opens_with_speech_and_closes_in_silence():
    r = StillRenderer(W, H)
    r.start_session(None, "")
    on = ([True] * 6 + [False] * 8) * 2
    c = render_chunk(0, len(on), start_frame=10)  # away from frame 0's blink-free quarter: nothing relies on it
    c.audio[:] = bursts(len(on), on)
    frames = r.render(c)
    assert frames.shape == (len(on), H, W, 3) and frames.dtype == np.uint8
    win = mouth_rows(r)
    dark = np.array([darkness(f, win, 10 + i) for i, f in enumerate(frames)])
    assert np.corrcoef(dark, np.asarray(on, np.float32))[0, 1] > 0.7, np.round(dark, 1)
    # Loud frames show the dark inside; by the end of each pause the lips are (nearly) closed again.
    closed = darkness(fit_image(default_portrait(), W, H, "cover"), win)
    assert dark[3] > closed + 40 and dark[17] > closed + 40, (closed, np.round(dark, 1))
    assert dark[13] - closed < 0.3 * (dark[3] - closed) and dark[27] - closed < 0.3 * (dark[17] - closed)


def test_silence_is_the_portrait_moved_only_by_sway_and_blinks():
    r = StillRenderer(W, H)
    r.start_session(None, "")
    still = fit_image(default_portrait(), W, H, "cover")
    frames = r.render(render_chunk(0, 100))
    moved = 0
    for k, f in enumerate(frames):
        dx, dy = sway_offset(k, FPS, W, H)
        moved += (dx, dy) != (0, 0)
        core = f[20 + dy:H - 20 + dy, 20 + dx:W - 20 + dx]
        diff = np.abs(core.astype(int) - still[20:H - 20, 20:W - 20]).max(axis=-1)
        if blink_closure(k, FPS) == 0:
            assert diff.max() == 0, k  # exactly the portrait, shifted
        else:
            ys, xs = np.nonzero(diff)  # the lids: only around the eyes, above the mouth
            assert len(ys) and ys.max() + 20 < mouth_rows(r)[0] - 40
    assert moved > 50, "the head sways"
    assert sum(blink_closure(k, FPS) == 1.0 for k in range(1000)) >= 2 * 8, "a blink every 4 s or so"


def test_the_same_frames_every_time_and_the_opening_carries_across_chunks():
    a, b = StillRenderer(W, H), StillRenderer(W, H)
    a.start_session(None, "")
    b.start_session(None, "")
    loud = render_chunk(0, 28)
    loud.audio[:] = bursts(28, [True] * 28)
    quiet = render_chunk(1, 28)  # follows `loud` on the timeline
    fa = a.render(loud)
    fb = b.render(loud)
    assert np.array_equal(fa, fb)
    win = mouth_rows(a)
    after_speech = a.render(quiet)
    fresh = b.render(render_chunk(1, 28, start_frame=500))  # not contiguous: starts closed
    assert darkness(after_speech[0], win, 28) > darkness(fresh[0], win, 500) + 20  # still closing
    assert darkness(after_speech[-1], win, 55) == pytest.approx(darkness(fresh[-1], win, 527), abs=3)


def test_levels_map_rms_to_zero_one():
    audio = bursts(3, [True, False, True], amp=1.0)
    audio[2 * SPF:] *= 0.001  # -63 dBFS: below the floor
    assert list(np.round(frame_levels(audio, 3), 2)) == [1.0, 0.0, 0.0]


def test_motion_off_and_tiny_frames_and_a_configured_box():
    r = StillRenderer(64, 64, motion=False)
    r.start_session(None, "")
    assert r.render(render_chunk(0, 4)).strides[0] == 0  # the old broadcast view
    for w, h in ((2, 2), (16, 16), (64, 96)):
        t = StillRenderer(w, h)
        t.start_session(None, "")
        c = render_chunk(0, 5)
        c.audio[:] = bursts(5, [True] * 5)
        assert t.render(c).shape == (5, h, w, 3)
    # A portrait whose mouth is elsewhere: the configured box moves the lower face there, nowhere else.
    img = np.full((400, 400, 3), 200, np.uint8)
    img[300:310, 150:250] = 40
    s = StillRenderer(400, 400, mouth_box=[150, 296, 100, 18])
    s.start_session(img, "")
    c = render_chunk(0, 10, start_frame=10)
    c.audio[:] = bursts(10, [True] * 10)
    f = s.render(c)[-1]
    dx, dy = sway_offset(19, FPS, 400, 400)
    assert (f[314 + dy:326 + dy, 185 + dx:215 + dx] < 120).mean() > 0.5  # the dropped lip or the dark inside
    assert np.array_equal(f[40 + dy:200 + dy, 40 + dx:360 + dx], img[40:200, 40:360])  # the top stays put
    with pytest.raises(ValueError, match="mouth_box"):
        StillRenderer(64, 64, mouth_box=[1, 2, 3])


def test_settings_carry_the_face_options():
    s = load_settings(overrides=["renderer.mouth_box=[10, 20, 30, 8]", "renderer.face_motion=false"], environ={})
    r = StillRenderer.from_settings(s)
    assert r.mouth_box == [10, 20, 30, 8] and r.motion is False
    with pytest.raises(ConfigError, match="renderer.mouth_box"):
        load_settings(overrides=["renderer.mouth_box=[10, 20, 0, 8]"], environ={})
    with pytest.raises(ConfigError, match="renderer.mouth_box"):
        load_settings(overrides=["renderer.mouth_box=[10, 20]"], environ={})
