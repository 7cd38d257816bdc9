"""The operator drills: drill_slowdown and drill_jitter_s slow any renderer down on purpose."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from flashtalk_live.renderers.drill import DrillRenderer, with_drills
from flashtalk_live.renderers.still import StillRenderer
from flashtalk_live.settings import Settings
from flashtalk_live.chunks import RenderAbandoned, RenderChunk

from support.chunks import render_chunk

FPS, NF = 25, 10


def chunk() -> RenderChunk:
    return render_chunk(0, NF)


def still() -> StillRenderer:
    r = StillRenderer(16, 16)
    r.start_session(None, "")
    return r


def test_slowdown_makes_a_fast_renderer_slower_than_real_time_and_keeps_its_frames():
    slept: list[float] = []
    inner = still()
    d = DrillRenderer(inner, FPS, slowdown=2.0, sleep=slept.append)
    frames = d.render(chunk())
    assert frames.shape == (NF, 16, 16, 3) and np.array_equal(frames[0], inner.frame)
    # The call as a whole lasts 2 x the chunk's 0.4 s: the sleep is that minus the (tiny) real render time.
    assert len(slept) == 1 and 0.4 < slept[0] <= 0.8 and d.added_s == slept[0]
    assert d.name == "still" and d.ready()  # everything else is the wrapped renderer's


def test_jitter_adds_a_bounded_random_delay_and_slowdown_one_adds_nothing():
    slept: list[float] = []
    d = DrillRenderer(still(), FPS, slowdown=1.0, jitter_s=0.3, seed=1, sleep=slept.append)
    for _ in range(50):
        d.render(chunk())
    assert len(slept) == 50 and all(0 <= s <= 0.3 for s in slept) and len(set(slept)) > 40


def test_settings_and_validation():
    s = Settings(state_dir="/nonexistent")
    r = still()
    assert with_drills(r, s.renderer, s.video.fps) is r  # off by default: no wrapper at all
    s2 = Settings(state_dir="/nonexistent", renderer={"drill_slowdown": 1.5, "drill_jitter_s": 0.1})
    w = with_drills(r, s2.renderer, s2.video.fps)
    assert isinstance(w, DrillRenderer) and (w.slowdown, w.jitter_s) == (1.5, 0.1)
    with pytest.raises(ValueError):
        Settings(state_dir="/nonexistent", renderer={"drill_slowdown": 0.5})
    with pytest.raises(ValueError):
        DrillRenderer(r, FPS, slowdown=2.0, jitter_s=-1)


def test_the_drills_wait_ends_when_a_replan_abandons_the_chunk():
    """A drilled renderer stands in for a slow engine: a re-plan that discards its chunk stops it at once."""
    d = DrillRenderer(still(), FPS, slowdown=20.0)  # an 8 s call for this 0.4 s chunk
    c = chunk()
    threading.Timer(0.2, c.abandoned.set).start()
    t0 = time.monotonic()
    with pytest.raises(RenderAbandoned):
        d.render(c)
    assert time.monotonic() - t0 < 4.0  # the event cut the 8 s wait (0.2 s; generous for a loaded box)
    assert d.abandon_s() is not None and d.abandon_s() < 1.0  # the still renderer runs to its end: its own time


class _Denoising(StillRenderer):
    """A renderer that can stop an abandoned chunk in its first 40 % (as FlashTalk while it denoises)."""

    def stoppable_share(self) -> float:
        return 0.4


def test_a_drill_that_adds_a_wait_makes_the_whole_call_stoppable():
    """The drill's own wait, at the end of the call, stops at once: the plan may count the call to its next step
    throughout (None), not only in the wrapped renderer's share; a drill that adds nothing passes the share on."""
    inner = _Denoising(48, 80)
    assert DrillRenderer(inner, FPS, slowdown=2.0).stoppable_share() is None
    assert DrillRenderer(inner, FPS, jitter_s=0.1).stoppable_share() is None
    assert DrillRenderer(inner, FPS).stoppable_share() == 0.4
    assert DrillRenderer(still(), FPS).stoppable_share() is None  # the still renderer has no share
