"""Pacing: bounded look-ahead, wall-clock release, underruns (hold frame + silence) without drift or skipped audio."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from flashtalk_live.playout.pacing import FrameClock, Lookahead, LookaheadClosed, Pacer
from flashtalk_live.chunks import Mark, RenderChunk, RenderedChunk

FPS, SPF, CH, NF = 25, 1920, 2, 5  # 5-frame chunks: 0.2 s each


def make_chunk(i: int, nf: int = NF, spf: int = SPF) -> RenderedChunk:
    """Chunk i, labelled: audio channel 0 = global sample index, frame pixels encode the global frame index."""
    f0 = i * nf
    audio = np.zeros((nf * spf, CH), np.float32)
    audio[:, 0] = np.arange(f0 * spf, (f0 + nf) * spf)
    audio[:, 1] = 1.0
    frames = np.zeros((nf, 2, 2, 3), np.uint8)
    for j in range(nf):
        frames[j, ..., 0], frames[j, ..., 1] = (f0 + j) % 256, (f0 + j) // 256
    chunk = RenderChunk(i, f0, nf, audio, np.zeros(nf * 640, np.float32), [f"s{i}"] * nf,
                        [Mark(f0 + 2, "started", f"s{i}")])
    return RenderedChunk(chunk, frames, "test", 0.0)


def frame_label(frame: np.ndarray) -> int:
    return int(frame[0, 0, 0]) + 256 * int(frame[0, 0, 1])


class SimTime:
    """Simulated time: sleep() advances the clock and lets a simulated renderer deliver chunks on its schedule."""

    def __init__(self) -> None:
        self.t = 0.0
        self.renderers: list[SimRenderer] = []

    def clock(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        assert dt >= 0
        self.t += dt
        for r in self.renderers:
            r.advance(self.t)


class SimRenderer:
    """Renders chunk after chunk, each taking render_s; blocks (does not render) while the look-ahead is full."""

    def __init__(self, sim: SimTime, la: Lookahead, render_s: float) -> None:
        self.la, self.render_s = la, render_s
        self.i = 0
        self.ready_at = render_s
        self.blocked = False
        self.high_water_frames = 0
        sim.renderers.append(self)

    def advance(self, now: float) -> None:
        while self.ready_at <= now:
            if not self.la.put(make_chunk(self.i), timeout=0):
                self.blocked = True  # full: this chunk waits, the renderer idles
                return
            self.i += 1
            # After waiting on a full buffer the next render starts only now; otherwise right after the last one.
            self.ready_at = (now if self.blocked else self.ready_at) + self.render_s
            self.blocked = False
            self.high_water_frames = max(self.high_water_frames, self.la.buffered_frames)


def _check_stream(items, pacer):
    """The invariants that make A/V lock: one frame + exactly SPF samples per slot, clip audio contiguous."""
    assert all(it.audio.shape == (SPF, CH) for it in items)
    assert pacer.audio_samples_out == pacer.frames_out * SPF == len(items) * SPF
    assert [it.out_frame for it in items] == list(range(len(items)))
    real = [it for it in items if not it.underrun]
    under = [it for it in items if it.underrun]
    assert pacer.underrun_frames == len(under)
    # Clip audio: never skipped, never repeated, in order.
    got = np.concatenate([it.audio[:, 0] for it in real]) if real else np.zeros(0)
    assert np.array_equal(got, np.arange(len(real) * SPF, dtype=np.float32))
    # Each real frame carries its own audio (lip sync is preserved through underruns).
    for it in real:
        assert frame_label(it.frame) == it.timeline_frame == int(it.audio[0, 0]) // SPF
    # Underrun slots: silence and a held frame (the previous slot's).
    for prev, it in zip(items, items[1:]):
        if it.underrun:
            assert not it.audio.any() and it.frame is prev.frame and it.marks == ()
    # Marks ride on the frame they name.
    for it in real:
        for m in it.marks:
            assert m.frame == it.timeline_frame
    assert sum(len(it.marks) for it in real) == len({it.timeline_frame // NF for it in real if it.timeline_frame % NF >= 2})
    return real, under


def test_slow_renderer_underruns_without_drift_simulated():
    sim = SimTime()
    la = Lookahead(3, SPF)
    SimRenderer(sim, la, render_s=1.5 * NF / FPS)  # 1.5x slower than real time
    la.put(make_chunk(0))
    sim.renderers[0].i = 1
    events = []
    pacer = Pacer(la, FPS, SPF, CH, clock=sim.clock, sleep=sim.sleep, on_underrun=events.append)
    items = [next(pacer) for _ in range(500)]
    real, under = _check_stream(items, pacer)
    # Wall clock: slot k leaves at exactly k / fps, however many underruns there were.
    assert [it.deadline for it in items] == [k / FPS for k in range(500)]
    assert sim.t == pytest.approx(499 / FPS)
    assert under and pacer.underrun_episodes > 1 and pacer.clock.reanchors == 0
    starts = [e for e in events if e["phase"] == "start"]
    assert len(starts) == pacer.underrun_episodes
    assert sum(e["frames"] for e in events if e["phase"] == "end") + (pacer._in_underrun) == pacer.underrun_frames
    print(f"\nslow renderer (1.5x): {len(real)} real + {len(under)} underrun frames in "
          f"{pacer.underrun_episodes} episodes; expected about {500 - 500 / 1.5:.0f} underrun frames")


def test_fast_renderer_is_held_back_and_memory_stays_bounded_simulated():
    sim = SimTime()
    la = Lookahead(3, SPF)
    r = SimRenderer(sim, la, render_s=0.01)
    la.put(make_chunk(0))
    r.i = 1
    pacer = Pacer(la, FPS, SPF, CH, clock=sim.clock, sleep=sim.sleep)
    items = []
    max_buffered = 0
    for _ in range(400):
        items.append(next(pacer))
        max_buffered = max(max_buffered, pacer.buffered_frames)
    _check_stream(items, pacer)
    assert pacer.underrun_frames == 0
    assert la.high_water_chunks == 3 and r.high_water_frames <= 3 * NF
    assert max_buffered <= 4 * NF  # the look-ahead plus the chunk on air
    assert r.i <= 400 // NF + 4  # the renderer was held back, not racing ahead
    print(f"\nfast renderer: high water {la.high_water_chunks} chunks, {max_buffered} frames buffered at most")


def test_hold_frame_before_the_first_chunk_and_recovery():
    sim = SimTime()
    la = Lookahead(2, SPF)
    hold = np.full((2, 2, 3), 7, np.uint8)
    pacer = Pacer(la, FPS, SPF, CH, clock=sim.clock, sleep=sim.sleep, hold_frame=hold)
    first = [next(pacer) for _ in range(3)]
    assert all(it.underrun and it.frame is hold and not it.audio.any() for it in first)
    la.put(make_chunk(0))
    nxt = next(pacer)
    assert not nxt.underrun and nxt.timeline_frame == 0 and pacer.underrun_episodes == 1
    assert pacer.stats()["underrun_frames"] == 3 and not pacer.in_underrun


def test_far_behind_reanchors_instead_of_bursting():
    sim = SimTime()
    la = Lookahead(50, SPF)
    for i in range(40):
        la.put(make_chunk(i))
    pacer = Pacer(la, FPS, SPF, CH, clock=sim.clock, sleep=sim.sleep, max_behind_s=1.0)
    for _ in range(10):
        next(pacer)
    sim.t += 5.0  # the process was suspended for 5 s
    resumed = [next(pacer) for _ in range(10)]
    assert pacer.clock.reanchors == 1
    # The first slot after the pause leaves at once, the rest at 1/fps spacing from there: no burst of 125 frames.
    assert [round(it.deadline - resumed[0].deadline, 9) for it in resumed] == [round(k / FPS, 9) for k in range(10)]
    assert resumed[0].lateness == 0.0
    # A smaller delay (under max_behind_s) is caught up, not re-anchored.
    sim.t += 0.2
    late = next(pacer)
    assert pacer.clock.reanchors == 1 and late.lateness == pytest.approx(0.2 - 1 / FPS)


def test_stop_drains_the_current_chunk_or_stops_at_once():
    la = Lookahead(4, SPF)
    for i in range(3):
        la.put(make_chunk(i))
    sim = SimTime()
    pacer = Pacer(la, FPS, SPF, CH, clock=sim.clock, sleep=sim.sleep)
    next(pacer), next(pacer)
    pacer.stop(drain=True)
    rest = list(pacer)
    assert [it.timeline_frame for it in rest] == [2, 3, 4]  # the chunk on air finishes, the next one does not start
    pacer2 = Pacer(la, FPS, SPF, CH, clock=sim.clock, sleep=sim.sleep)
    next(pacer2)
    pacer2.stop(drain=False)
    assert list(pacer2) == []


def test_lookahead_validates_blocks_and_closes():
    la = Lookahead(1, SPF)
    bad = make_chunk(0)
    with pytest.raises(ValueError, match="frames must be uint8"):
        la.put(RenderedChunk(bad.chunk, bad.frames[:3], "x", 0))
    with pytest.raises(ValueError, match="audio has"):
        la.put(RenderedChunk(make_chunk(0, spf=SPF - 1).chunk, bad.frames, "x", 0))
    with pytest.raises(ValueError, match="max_chunks"):
        Lookahead(0)
    la.put(make_chunk(0))
    assert la.put(make_chunk(1), timeout=0.01) is False  # full
    outcome = []

    def producer():
        try:
            la.put(make_chunk(2))
            outcome.append("put")
        except LookaheadClosed:
            outcome.append("closed")

    t = threading.Thread(target=producer)
    t.start()
    t.join(0.1)
    assert t.is_alive()  # blocked while full
    assert la.get_nowait().chunk.index == 0
    t.join(2)
    assert outcome == ["put"] and len(la) == 1 and la.buffered_frames == NF
    t2 = threading.Thread(target=producer)
    t2.start()
    t2.join(0.1)
    la.close()
    t2.join(2)
    assert outcome == ["put", "closed"]
    assert la.get_nowait().chunk.index == 2 and la.get_nowait() is None


def test_frame_clock_lateness_stats():
    sim = SimTime()
    fc = FrameClock(FPS, clock=sim.clock, sleep=sim.sleep)
    fc.wait_next()
    sim.t += 0.1  # 60 ms late for slot 1
    tick = fc.wait_next()
    assert tick.lateness == pytest.approx(0.06) and fc.lateness_max == pytest.approx(0.06)
    assert fc.lateness_mean == pytest.approx(0.03)


@pytest.mark.timeout(60)
def test_real_time_renderer_threads_fast_then_slow():
    """Real threads and the real clock: a renderer fast for 1.5 s, then 1.5x slower than real time for 3 s."""
    la = Lookahead(3, SPF)
    slow_after = 1.5
    stop = threading.Event()
    t_start = time.monotonic()

    def renderer():
        i = 0
        try:
            while not stop.is_set():
                slow = time.monotonic() - t_start > slow_after
                time.sleep(1.5 * NF / FPS if slow else 0.005)
                la.put(make_chunk(i))
                i += 1
        except LookaheadClosed:
            pass

    th = threading.Thread(target=renderer, daemon=True)
    th.start()
    pacer = Pacer(la, FPS, SPF, CH)
    items, buffered = [], []
    t0 = time.monotonic()
    for it in pacer:
        items.append(it)
        buffered.append(pacer.buffered_frames)
        if len(items) == int(4.5 * FPS):
            break
    wall = time.monotonic() - t0
    stop.set()
    la.close()
    th.join(5)
    real, under = _check_stream(items, pacer)
    assert max(buffered) <= 4 * NF and la.high_water_chunks <= 3
    assert under  # the slow phase cannot keep up: 3 s needs 75 frames, it renders at most 50 + the buffer
    s = pacer.stats()
    print(f"\nreal time: {len(items)} frames in {wall:.3f} s (ideal {(len(items) - 1) / FPS:.3f} s); "
          f"underruns {s['underrun_frames']} frames / {s['underrun_episodes']} episodes; "
          f"lateness mean {s['lateness_mean_s'] * 1000:.2f} ms max {s['lateness_max_s'] * 1000:.2f} ms; "
          f"max buffered {max(buffered)} frames; reanchors {s['reanchors']}")


@pytest.mark.timeout(60)
def test_timeline_still_renderer_and_pacer_together():
    """The real parts wired as the daemon will: timeline -> still renderer -> look-ahead -> pacer (simulated clock)."""
    from types import SimpleNamespace

    from flashtalk_live.renderers.still import StillRenderer
    from flashtalk_live.settings import Settings
    from flashtalk_live.playout.timeline import Timeline

    st = Settings(state_dir="/nonexistent", video={"width": 64, "height": 96, "chunk_frames": 7})
    clips = {"a": np.full((30000, 2), 0.25, np.float32), "b": np.full((5000, 2), 0.5, np.float32)}

    class Queue:
        pending = ["a", "b"]

        def take_next(self):
            return SimpleNamespace(segment_id=self.pending.pop(0), duration_s=0) if self.pending else None

        def load_audio(self, e):
            b = clips[e.segment_id]
            return SimpleNamespace(broadcast=b, model=np.zeros(len(b) // 3, np.float32), duration_s=len(b) / 48000)

        def interrupt_pending(self):
            return False

        def mark_interrupted(self, seg):
            raise AssertionError(seg)

    tl = Timeline(st.video, st.encoder, Queue(), None)
    r = StillRenderer.from_settings(st)
    r.start_session(None, st.video.prompt)
    sim = SimTime()
    la = Lookahead(st.renderer.lookahead_chunks, st.samples_per_frame)

    class Producer:  # renders one chunk each time the pacer sleeps and there is room: an infinitely fast renderer
        def advance(self, now):
            while len(la) < la.max_chunks:
                c = tl.next_chunk()
                la.put(RenderedChunk(c, r.render(c), r.name, 0.0))

    sim.renderers.append(Producer())
    sim.renderers[0].advance(0)
    pacer = Pacer(la, st.video.fps, st.samples_per_frame, st.encoder.audio_channels, clock=sim.clock, sleep=sim.sleep)
    items = [next(pacer) for _ in range(40)]
    audio = np.concatenate([it.audio for it in items])
    assert audio.shape == (40 * 1920, 2)
    assert np.all(audio[:30000] == 0.25) and np.all(audio[30000:35000] == 0.5) and not audio[35000:].any()
    marks = [(it.out_frame, m.kind, m.segment_id) for it in items for m in it.marks]
    assert marks == [(0, "started", "a"), (15, "finished", "a"), (15, "started", "b"), (18, "finished", "b")]
    assert all(it.frame.shape == (96, 64, 3) for it in items) and pacer.underrun_frames == 0
    # And the broadcast side's encoder takes the items as they come (read-only shared frames, float32 audio).
    from flashtalk_live.media.encoder import Encoder

    enc = Encoder(st.encoder.model_copy(update={"preset": "ultrafast"}), 64, 96, st.video.fps)
    packets = [p for it in items for p in enc.encode(it.frame, it.audio)]
    assert packets and enc.frames == pacer.frames_out and enc.audio_samples_in == pacer.audio_samples_out


def test_underruns_are_counted_apart_inside_and_outside_clips():
    """A frame repeated while a clip is on air (between its started and finished marks as aired) counts as 'clip'."""
    sim = SimTime()
    la = Lookahead(8, SPF)
    events = []
    pacer = Pacer(la, FPS, SPF, CH, clock=sim.clock, sleep=sim.sleep, on_underrun=events.append)

    def chunk(i, marks):
        c = make_chunk(i)
        c.chunk.marks = [Mark(i * NF + off, kind, "x") for off, kind in marks]
        return c

    la.put(chunk(0, [(1, "started")]))
    items = [next(pacer) for _ in range(NF + 3)]  # 3 frames repeated inside clip x
    la.put(chunk(1, [(2, "finished")]))
    items += [next(pacer) for _ in range(NF + 4)]  # 4 frames repeated after it finished
    assert [it.underrun for it in items].count(True) == 7
    assert pacer.underrun_frames_by_where == {"clip": 3, "idle": 4}
    st = pacer.stats()
    assert (st["underrun_frames_clip"], st["underrun_frames_idle"], st["underrun_frames"]) == (3, 4, 7)
    assert [e["where"] for e in events if e["phase"] == "start"] == ["clip", "idle"]
    # A held frame belongs to what is on air: the stalled clip x, then nothing once x finished.
    assert [it.segment_id for it in items if it.underrun] == ["x"] * 3 + [None] * 4


def test_cut_silences_a_clip_in_buffered_and_later_chunks_and_marks_the_next_chunk_to_air():
    la = Lookahead(8, samples_per_frame=SPF)

    def clip_chunk(i: int, segs: list, marks: list) -> RenderedChunk:
        c = make_chunk(i)
        c.chunk.audio[:, 1] = 1.0
        return RenderedChunk(RenderChunk(i, c.chunk.start_frame, NF, c.chunk.audio, c.chunk.model_audio, segs, marks),
                             c.frames, "test", 0.0)

    on_air = clip_chunk(0, ["a"] * NF, [Mark(0, "started", "a")])
    la.put(on_air)
    la.put(clip_chunk(1, ["a"] * NF, []))
    la.put(clip_chunk(2, ["a", "a", "b", "b", "b"], [Mark(11, "finished", "a"), Mark(12, "started", "b")]))
    assert la.get_nowait() is on_air  # the pacer holds chunk 0: it airs as it is
    la.cut("a")
    la.cut("a")  # twice: one cut, one mark
    later = clip_chunk(3, ["a"] * NF, [Mark(15, "interrupted", "a")])  # the timeline's own cut, rendered late
    la.put(later)
    c1, c2, c3 = la.get_nowait(), la.get_nowait(), la.get_nowait()
    assert c1.chunk.marks == [Mark(5, "interrupted", "a", "queue")]  # the cut airs with the next chunk
    assert c1.chunk.idle and c1.chunk.frame_segments == [None] * NF and not c1.chunk.audio.any()
    assert c1.frames is not None and c1.chunk.start_frame == 5  # times and frames stay: what follows keeps its plan
    assert c2.chunk.marks == [Mark(12, "started", "b")] and c2.chunk.frame_segments == [None, None, "b", "b", "b"]
    assert not c2.chunk.audio[: 2 * SPF].any() and c2.chunk.audio[2 * SPF:, 1].all()
    assert c3.chunk.marks == [] and not c3.chunk.audio.any()
    assert on_air.chunk.audio[:, 1].all()  # chunks are replaced, never written in place
    assert la.frames_scrubbed == 2 * NF + 2
