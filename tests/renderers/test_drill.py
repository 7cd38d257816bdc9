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


class _TimedEngine:
    """An engine slower than real time (0.3 s per 0.2 s chunk) that times a chunk after its load, as
    FlashTalkRenderer.time_chunks does for the supervisor's rate and hang deadline."""

    name = "timed"

    def __init__(self) -> None:
        self.closed = False

    def start_session(self, image: np.ndarray, prompt: str) -> None:
        pass

    def ready(self) -> bool:
        return not self.closed

    def time_chunks(self, n: int, timer, new_frames: int | None = None) -> list[float]:  # noqa: ANN001
        return [timer(lambda: time.sleep(0.3)) for _ in range(n)]

    def render(self, chunk) -> np.ndarray:  # noqa: ANN001
        time.sleep(0.3)
        return np.zeros((chunk.n_frames, 16, 16, 3), np.uint8)

    def close(self) -> None:
        self.closed = True


def test_a_drilled_engine_is_timed_as_it_renders_so_its_hang_deadline_covers_the_drill():
    """The supervisor's rate and hang deadline start from `time_chunks`, which the drill passed through undrilled:
    at drill_slowdown 3 (a 0.9 s call), the deadline was 2 x max(0.2 s, 0.3 s) = 0.6 s, so the drilled engine,
    slow but not hung, was abandoned as hung at its first chunk (and again after every reload)."""
    from flashtalk_live.renderers.supervisor import RendererSupervisor

    s = Settings(state_dir="/nonexistent",
                 renderer={"drill_slowdown": 3.0, "deadline_factor": 2.0, "fallback_retry_initial_s": 60.0},
                 video={"width": 16, "height": 16, "chunk_frames": 5, "fps": FPS})
    engine = _TimedEngine()
    sup = RendererSupervisor(s.renderer, s.video, still(), load=lambda: with_drills(engine, s.renderer, FPS),
                             reference=np.zeros((16, 16, 3), np.uint8))
    sup.start()
    try:
        assert sup._loading is not None
        sup._loading.join(30)
        assert sup.preferred is not None, sup.last_error
        assert sup.typical_s is not None and sup.typical_s >= 0.9, sup.typical_s  # 3 x max(0.3 s, 0.2 s)
        assert sup.deadline_s(0.2) >= 1.8
        out = sup.render(render_chunk(0, 5))
        assert out.renderer == "timed" and sup.failures == 0, sup.last_error
    finally:
        sup.close()


def test_a_drilled_engine_faster_than_real_time_is_timed_at_slowdown_x_its_chunks_duration():
    """As its render: slowdown x max(own time, the chunk's duration), the jitter in full; a lead-in length by its own
    duration. A renderer without `time_chunks` (the still renderer) still has none through the drill."""
    d = DrillRenderer(_TimedEngine(), FPS, slowdown=3.0, jitter_s=0.1, chunk_frames=5)
    assert d.time_chunks(1, lambda run: 0.01) == [pytest.approx(3 * 0.2 + 0.1)]
    assert d.time_chunks(2, lambda run: 0.01, 2) == [pytest.approx(3 * 0.08 + 0.1)] * 2
    assert DrillRenderer(_TimedEngine(), FPS, jitter_s=0.1).time_chunks(1, lambda run: 0.5) == [pytest.approx(0.6)]
    assert getattr(DrillRenderer(still(), FPS, slowdown=2.0), "time_chunks", None) is None
