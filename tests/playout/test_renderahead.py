"""Render ahead in simulated time: the real Timeline, Admission, RenderAhead, Lookahead and Pacer, with a renderer
that costs `rate` x real time per live chunk. Minutes of air in a fraction of a second, and no wall-clock asserts."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from flashtalk_live.playout.pacing import Lookahead, Pacer
from flashtalk_live.playout.idlebank import IdleBank
from flashtalk_live.playout.renderahead import IdleLoop, RenderAhead
from flashtalk_live.playout.admission import Admission, RenderRate
from flashtalk_live.chunks import RenderChunk, RenderedChunk
from flashtalk_live.playout.timeline import Timeline

from support.queue_fakes import FakeQueue, labelled_wav
from support.settings import load_programme, room_settings  # noqa: E402

FPS, NF, RATE, CH = 25, 10, 48000, 2
SPF, C = RATE // FPS, NF / FPS


class PeekQueue(FakeQueue):
    def peek(self):
        return self.pending[0] if self.pending else None


class Sim:
    """Simulated time; sleep() pushes due clips, then lets the renderer finish and start chunks on its schedule."""

    def __init__(self, rate: float, *, gate: bool, clip_s: float, period_s: float, n_clips: int,
                 programme=None, lookahead_s: float = 20.0) -> None:  # noqa: ANN001
        st = SimpleNamespace(video=SimpleNamespace(fps=FPS, chunk_frames=NF, lead_in_frames=()),
                             encoder=SimpleNamespace(audio_rate=RATE, audio_channels=CH),
                             renderer=SimpleNamespace(lookahead_chunks=3, lookahead_s=lookahead_s,
                                                      admission_margin=0.25))
        self.t, self.rate, self.name = 0.0, rate, "sim"
        self.q = PeekQueue(RATE, CH)
        self.pushes = [(2.0 + i * period_s, f"c{i}", int(clip_s * RATE)) for i in range(n_clips)]
        self.la = Lookahead(3, SPF)
        self.pacer = Pacer(self.la, FPS, SPF, CH, clock=lambda: self.t, sleep=self.sleep,
                           hold_frame=np.zeros((2, 2, 3), np.uint8))
        self.adm = Admission.from_settings(st.renderer, st.video, lambda: self.pacer.buffered_frames / FPS)
        self.tl = Timeline(st.video, st.encoder, self.q, programme, admission=self.adm if gate else None, history_seconds=0)
        self.ra = RenderAhead(self.tl, self.render, lambda: "sim", self.adm, self.la, fps=FPS)
        self.frames = np.zeros((NF, 2, 2, 3), np.uint8)
        self.pending: RenderedChunk | None = None
        self.pending_at = 0.0
        self.free_at = 0.0  # when the renderer may start its next chunk
        self.live = 0
        self.spent = 0.0

    def render(self, chunk: RenderChunk) -> RenderedChunk:
        self.live += 1
        self.spent += self.rate * C  # a step may render more than its chunk (an idle bank link)
        return RenderedChunk(chunk, self.frames, self.name, self.rate * C)

    def sleep(self, dt: float) -> None:
        self.t += dt
        while self.pushes and self.pushes[0][0] <= self.t:
            _, sid, n = self.pushes.pop(0)
            self.q.add(sid, n)
        while True:
            if self.pending is not None:
                if self.pending_at > self.t or not self.la.put(self.pending, timeout=0):
                    return
                self.free_at, self.pending = max(self.pending_at, self.free_at), None
            self.free_at = max(self.free_at, self.pending_at)
            self.spent = 0.0
            item = self.ra.step()
            self.pending, self.pending_at = item, self.free_at + self.spent

    def run(self, seconds: float) -> list:
        self.sleep(0.0)
        return [next(self.pacer) for _ in range(int(seconds * FPS))]


def _clip_spans(items) -> list[tuple[str, int, int]]:
    starts, spans = {}, []
    for it in items:
        for m in it.marks:
            if m.kind == "started":
                starts[m.segment_id] = it.out_frame
            elif m.kind == "finished":
                spans.append((m.segment_id, starts[m.segment_id], it.out_frame))
    return spans


@pytest.mark.parametrize("rate,clip_s,period_s", [(2.0, 3.0, 7.5), (1.5, 6.0, 10.0)])
def test_slow_renderer_never_stalls_inside_a_clip_over_three_minutes(rate, clip_s, period_s):
    n = 17
    sim = Sim(rate, gate=True, clip_s=clip_s, period_s=period_s, n_clips=n)
    items = sim.run(2.0 + n * period_s + 25)
    spans = _clip_spans(items)
    assert sim.pacer.underrun_frames_by_where["clip"] == 0
    assert [s for s, _, _ in spans] == [f"c{i}" for i in range(n)]  # every clip aired once, in order
    assert all(b - a == int(clip_s * FPS) - 1 for _, a, b in spans)
    assert sim.adm.refusals > 0 and sim.adm.over_floor == 0 and sim.ra.idle.replayed > 0
    delays = [a / FPS - (2.0 + i * period_s) for i, (_, a, _) in enumerate(spans)]
    print(f"\nrate {rate}: on-air delay after push (s) min {min(delays):.1f} max {max(delays):.1f}; "
          f"idle underrun frames {sim.pacer.underrun_frames_by_where['idle']}")


def test_without_the_gate_the_same_load_stalls_inside_clips():
    """The control: the same renderer and clips with no admission stall speech (so the test above can fail)."""
    sim = Sim(2.0, gate=False, clip_s=3.0, period_s=7.5, n_clips=6)
    sim.run(2.0 + 6 * 7.5 + 10)
    assert sim.pacer.underrun_frames_by_where["clip"] > 0


def test_the_stated_floor_a_renderer_at_0_3x_real_time_with_the_default_budget():
    # docs/broadcast.md: with lookahead_s = 60 a renderer at 0.3x real time (rate 3.3) airs 12 s clips without a stall.
    n = 5
    sim = Sim(3.3, gate=True, clip_s=12.0, period_s=60.0, n_clips=n, lookahead_s=60.0)
    sim.ra.expected_rate = lambda: 3.3
    items = sim.run(2.0 + n * 60.0 + 60)
    spans = _clip_spans(items)
    assert [s for s, _, _ in spans] == [f"c{i}" for i in range(n)]
    assert all(b - a == int(12.0 * FPS) - 1 for _, a, b in spans)
    assert sim.pacer.underrun_frames_by_where["clip"] == 0 and sim.adm.over_floor == 0
    # ... and a 12 s clip waited its head start, (n r' - (n - 1)) c with n = 31 chunks of 0.4 s.
    assert max(a / FPS - (2.0 + i * 60.0) for i, (_, a, _) in enumerate(spans)) >= 31 * 3.3 * 1.25 * C - 30 * C - 1


def test_fast_renderer_is_never_held_back():
    sim = Sim(0.5, gate=True, clip_s=3.0, period_s=4.0, n_clips=8)
    items = sim.run(40)
    spans = _clip_spans(items)
    assert len(spans) == 8 and sim.adm.refusals == 0 and sim.pacer.underrun_frames_by_where["clip"] == 0
    assert sim.ra.idle.replayed == 0  # idle is rendered live while the renderer keeps up
    # A clip pushed to an idle room is on air within the base look-ahead (3 chunks + the one on air + one in hand).
    assert spans[0][1] / FPS - 2.0 <= 5 * C + 1 / FPS


def test_admission_head_start_and_limits():
    b = [0.0]
    adm = Admission(chunk_s=0.4, fps=25, base_chunks=3, capacity_s=10.0, margin=0.0, buffered_s=lambda: b[0])
    assert adm.may_start("a", 60.0, 0)  # nothing measured yet: no reason to wait
    adm.rate.observe(0.8, 0.4)  # 2x real time
    # n = ceil(3 / 0.4) + 1 = 9 chunks; the last is ready 9 * 0.8 s from now and needed 8 * 0.4 s after B
    assert adm.head_start_s(3.0) == pytest.approx(9 * 0.8 - 8 * 0.4)
    assert not adm.may_start("a", 3.0, 0) and adm.target_chunks() == math.ceil(4.0 / 0.4) + 1
    b[0] = 4.0
    assert adm.may_start("a", 3.0, 10) and adm.target_chunks() == 3 and adm.over_floor == 0
    # Too long for the budget: it starts once the buffer is as full as the budget allows, and is counted.
    b[0] = 1.0
    assert not adm.may_start("long", 60.0, 20)
    assert adm.target_chunks() == math.ceil(10.0 / 0.4) + 1
    b[0] = 9.7
    assert adm.may_start("long", 60.0, 30) and adm.over_floor == 1
    # A buffer that still grows, however slowly (a loaded box), keeps the clip waiting past capacity_s ...
    b[0] = 1.0
    assert not adm.may_start("slow", 5.0, 100)
    for k in range(1, 40):
        b[0] = 1.0 + 0.05 * k
        assert not adm.may_start("slow", 5.0, 100 + 10 * k), k
    assert adm.over_floor == 1 and adm.last is not None and adm.last.reason == "building_head_start"
    # ... and one that stopped growing (no idle replay) starts after capacity_s of timeline without a new peak.
    assert not adm.may_start("slow", 5.0, 100 + 10 * 39 + 249)
    assert adm.may_start("slow", 5.0, 100 + 10 * 39 + 250) and adm.over_floor == 2 and adm.last.reason == "buffer_stalled"
    # A renderer at real time or faster needs one chunk at most: what the base look-ahead holds.
    fast = Admission(chunk_s=0.4, fps=25, base_chunks=3, capacity_s=10.0, margin=0.25, buffered_s=lambda: 0.4)
    fast.rate.observe(0.3, 0.4)
    assert fast.head_start_s(30.0) <= 0.4 and fast.may_start("x", 30.0, 0)


def test_a_queue_clip_waiting_for_its_head_start_is_not_starved_by_the_programme(tmp_path):
    # Short programme items pass the gate long before a long queue clip does; they must not keep taking the air
    # (and the render time) while it waits: on an H200 at the quality profile a clip waited 10 minutes that way.
    for i in range(3):
        labelled_wav(tmp_path / f"p{i}.wav", 10 + i, 2.0)
    (tmp_path / "p.m3u").write_text("\n".join(f"p{i}.wav" for i in range(3)) + "\n")
    prog = load_programme(tmp_path / "p.m3u", room_settings(tmp_path))
    assert len(prog.entries) == 3
    sim = Sim(2.0, gate=True, clip_s=8.0, period_s=100.0, n_clips=1, programme=prog)
    sim.ra.expected_rate = lambda: 2.0  # the engine's warm-up: the first programme item is gated too
    items = sim.run(90)
    spans = _clip_spans(items)
    assert any(sid.startswith("programme:") for sid, _, _ in spans)  # the programme aired before the push
    queue = [a for sid, a, _ in spans if sid == "c0"]
    assert queue, f"the queue clip never aired: {spans}"
    # Head start at 2x (+25 %): 21 chunks of 0.4 s -> 13 s buffered (starved: never within the 90 s).
    assert queue[0] / FPS - 2.0 <= 20.0, queue[0] / FPS  # 13 s head start, the item on air, the growth
    assert sim.pacer.underrun_frames_by_where["clip"] == 0 and sim.adm.over_floor == 0


def test_a_slow_renderer_builds_its_idle_bank_in_spare_time_not_on_air():
    # 2x slower than real time: drawing each bank link as the idle on air would hold a frame for every link.
    sim = Sim(2.0, gate=True, clip_s=3.0, period_s=100.0, n_clips=0)
    bank = IdleBank(size=6, crossfade_frames=2, config="cfg", store=None, chunk_frames=NF, fps=FPS)
    bank.set_avatar(np.zeros((8, 8, 3), np.uint8), "")
    sim.ra.bank, sim.ra.renderer_identity, sim.ra.expected_rate = bank, lambda: "sim:w", lambda: 2.0
    items = sim.run(30)
    st = bank.status()
    assert st["state"] == "ready" and st["rendered_chunks"] == 6 and st["served_chunks"] > 50
    # Only the first link airs late (nothing is buffered at the start); the other five were drawn in spare time.
    held = [it.out_frame for it in items if it.underrun]
    assert sim.pacer.underrun_frames_by_where["idle"] <= 2 * C * FPS and all(f < 2 * C * FPS for f in held), held


def test_the_rate_is_the_renderer_on_duty_and_a_newcomer_starts_from_its_warm_up():
    sim = Sim(0.1, gate=True, clip_s=3.0, period_s=100.0, n_clips=0)
    guess: list[float | None] = [None]
    sim.ra.current_renderer = lambda: sim.name
    sim.ra.expected_rate = lambda: guess[0]
    sim.run(3.0)
    assert sim.adm.rate.value == pytest.approx(0.1)
    # The engine takes over (warm-up: 2x real time): planned at once with that, not a blend with 0.1 ...
    sim.name, sim.rate, guess[0] = "engine", 3.0, 2.0
    sim.ra.expected_short = lambda: {8: 0.4}  # and its lead-in lengths from their timing after the warm-up
    sim.ra._expect(sim.name)
    assert sim.adm.rate.value == pytest.approx(2.0) and sim.adm.planning_rate == pytest.approx(2.5)
    assert sim.adm.rate.short == {8: 0.4} and sim.adm.chunk_render_s(8) == pytest.approx(0.5)
    sim.ra.step()
    assert sim.adm.rate.value == pytest.approx(2.5)  # then its chunks count, rising fast
    # ... and the still renderer after a failure (no guess) counts from its own first chunk.
    sim.name, sim.rate, guess[0] = "still", 0.05, None
    sim.ra.step()
    assert sim.adm.rate.value == pytest.approx(0.05) and sim.adm.rate.short == {}


def test_render_rate_rises_fast_and_falls_slowly():
    r = RenderRate()
    r.observe(1.0, 1.0)
    r.observe(3.0, 1.0)
    assert r.value == pytest.approx(2.0)
    r.observe(1.0, 1.0)
    assert r.value == pytest.approx(1.9)


def test_idle_loop_is_a_ping_pong_that_never_repeats_a_frame_and_renders_live_now_and_then():
    loop = IdleLoop(live_every=6)
    frames = np.arange(NF, dtype=np.uint8).reshape(NF, 1, 1, 1).repeat(3, axis=3)
    ch = RenderChunk(0, 0, NF, np.zeros((NF * SPF, CH), np.float32), np.zeros(0, np.float32), [None] * NF, idle=True)
    assert loop.replay(ch, "r") is None  # nothing rendered yet
    loop.remember(RenderedChunk(ch, frames, "r", 1.0))
    got = [loop.replay(ch, "r") for _ in range(5)]
    seq = [int(v) for g in [frames] + got for v in g[:, 0, 0, 0]]
    # 0..9, 8..0, 1..9, 8..0, ...: continuous, and no frame twice in a row
    assert seq[:30] == list(range(10)) + list(range(8, -1, -1)) + list(range(1, 10)) + [8, 7]
    assert all(a != b for a, b in zip(seq, seq[1:]))
    assert loop.replay(ch, "r") is None  # the 6th is rendered live again
    assert loop.replay(ch, "other") is None  # never another renderer's frames
    loop.clear()
    assert loop.replay(ch, "r") is None
    # Identical frames (the still renderer's broadcast view) are replayed as they are, never copied.
    same = np.broadcast_to(frames[3], frames.shape)
    loop.remember(RenderedChunk(ch, same, "still", 0.0))
    assert loop.replay(ch, "still") is same


def test_a_shorter_idle_chunk_is_rendered_live_without_drawing_a_bank_link_first():
    """A lead-in's idle chunk (after a re-plan) was planned to render in its own short time: drawing the bank's
    next whole link before it (which the bank could not serve at that length anyway) made it late on air."""
    sim = Sim(0.5, gate=True, clip_s=3.0, period_s=100.0, n_clips=0)
    bank = IdleBank(size=6, crossfade_frames=2, config="cfg", store=None, chunk_frames=NF, fps=FPS)
    bank.set_avatar(np.zeros((8, 8, 3), np.uint8), "")
    sim.ra.bank, sim.ra.renderer_identity = bank, lambda: "sim:w"
    bank.sync("sim:w")
    assert bank.active and not bank.chunks  # incomplete: a whole idle chunk would draw its first link now
    short = RenderChunk(0, 0, NF // 2, np.zeros((NF // 2 * SPF, CH), np.float32), np.zeros(0, np.float32),
                        [None] * (NF // 2), idle=True)
    assert sim.ra._from_bank(short, "sim") is None and sim.live == 0
    whole = RenderChunk(1, NF // 2, NF, np.zeros((NF * SPF, CH), np.float32), np.zeros(0, np.float32),
                        [None] * NF, idle=True)
    assert sim.ra._from_bank(whole, "sim") is not None and sim.live == 1, "the control: a whole one draws a link"


def test_a_shorter_idle_chunk_airs_the_head_of_a_bank_link_without_a_render():
    """A re-plan's ramp before its clip may start (a stream gathering its first chunk): with bank links there, its
    idle costs no render, so the render thread is free for the clip's ready re-plan (on an H100 a ramp's live idle
    chunk held every 4x stream back by its render)."""
    sim = Sim(0.5, gate=True, clip_s=3.0, period_s=100.0, n_clips=0)
    bank = IdleBank(size=2, crossfade_frames=2, config="cfg", store=None, chunk_frames=NF, fps=FPS)
    bank.set_avatar(np.zeros((8, 8, 3), np.uint8), "")
    sim.ra.bank, sim.ra.renderer_identity = bank, lambda: "sim:w"
    bank.sync("sim:w")
    link = np.arange(NF * 4 * 4 * 3, dtype=np.uint8).reshape(NF, 4, 4, 3)
    bank.add_rendered(link)
    short = RenderChunk(0, 0, NF // 2, np.zeros((NF // 2 * SPF, CH), np.float32), np.zeros(0, np.float32),
                        [None] * (NF // 2), idle=True)
    out = sim.ra._from_bank(short, "sim")
    assert out is not None and sim.live == 0 and out.render_seconds == 0.0
    np.testing.assert_array_equal(out.frames, link[: NF // 2])
    speech = RenderChunk(1, 0, NF // 2, np.zeros((NF // 2 * SPF, CH), np.float32), np.zeros(0, np.float32),
                         ["c0"] * (NF // 2), idle=False)
    assert sim.ra._from_bank(speech, "sim") is None, "speech is never the bank's"


class _Engine:
    """A preferred renderer that records the motion frames each chunk brings (what aired before it)."""

    name = "engine"

    def __init__(self) -> None:
        self.motion: list[np.ndarray | None] = []

    def start_session(self, image: np.ndarray, prompt: str) -> None:
        pass

    def ready(self) -> bool:
        return True

    def render(self, chunk: RenderChunk) -> np.ndarray:
        self.motion.append(None if chunk.motion_frames is None else np.array(chunk.motion_frames))
        return np.full((chunk.n_frames, 2, 2, 3), 9, np.uint8)

    def close(self) -> None:
        pass


def test_an_engine_published_between_the_name_and_the_render_continues_from_what_aired():
    """The loader thread publishes the engine at any moment: when it lands after the render thread read the
    renderer on duty ("still", whose own live chunk is the tail: no motion frames needed) and before the render,
    the engine drew its first chunk from its own warm-up state instead of the frames on air (a jump on air)."""
    from flashtalk_live.renderers.still import StillRenderer
    from flashtalk_live.renderers.supervisor import RendererSupervisor
    from flashtalk_live.settings import Settings

    sim = Sim(0.1, gate=True, clip_s=3.0, period_s=100.0, n_clips=0)
    s = Settings(state_dir="/nonexistent", video={"width": 2, "height": 2, "chunk_frames": NF, "fps": FPS})
    still = StillRenderer(2, 2, motion=False)
    still.start_session(np.full((2, 2, 3), 100, np.uint8), "")
    sup = RendererSupervisor(s.renderer, s.video, still, load=None, reference=np.zeros((2, 2, 3), np.uint8))
    engine = _Engine()
    calls = [0]
    publish_at = [None]

    def current() -> str:
        name = sup.current_name()
        calls[0] += 1
        if calls[0] == publish_at[0]:
            sup.preferred = engine  # the loader's publication (renderers/supervisor.py), right after this read
        return name

    sim.ra.render, sim.ra.current_renderer = sup.render, current
    for _ in range(2):
        assert sim.ra.step().renderer == "still"
    publish_at[0] = calls[0] + 2  # the step's second read: the name its render and motion frames go by
    out = sim.ra.step()
    assert out.renderer == "engine" and len(engine.motion) == 1
    assert engine.motion[0] is not None, "the engine's first chunk was not told what aired before it"
    assert int(engine.motion[0][-1, 0, 0, 0]) == 100  # the still renderer's last frame
