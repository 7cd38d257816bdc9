"""A clip's lead-in (video.lead_in_frames) in the timeline, the replanner and the admission: a queue clip that starts
on a whole chunk's first frame is cut into the shorter lengths first (a ramp), then whole chunks; every re-plan
starts a ramp; a ramp runs to its end whatever plays (each of its chunks was planned to render in the air of the one
before); a clip that starts mid-chunk gets none; the head start counts the shorter chunks with their own render
times. Real spool, registry, look-ahead and timeline; audio levels label the clips."""

from __future__ import annotations

import itertools
import math
import threading

import numpy as np
import pytest

from flashtalk_live.chunks import RenderedChunk
from flashtalk_live.playout.admission import Admission
from flashtalk_live.playout.pacing import Lookahead
from flashtalk_live.playout.replan import Replanner
from flashtalk_live.playout.timeline import Timeline
from flashtalk_live.queue.spool import Spool
from flashtalk_live.queue.streams import StreamRegistry
from flashtalk_live.settings import Settings

from support.level_clips import add_level_clip, level_pcm

CF, SPF = 28, 1920  # 1.12 s chunks of 48 kHz audio at 25 fps
LEAD = (8, 16)


class Room:
    def __init__(self, tmp_path, lead=LEAD, prebuffer_s: float = 0.4, clock=None) -> None:
        st = Settings(state_dir="/nonexistent-state", video={"lead_in_frames": list(lead)},
                      streams={"prebuffer_s": prebuffer_s})
        self.spool = Spool(tmp_path / "spool")
        self.streams = StreamRegistry(st.streams, st.ingest, st.encoder, self.spool, chunk_s=CF / 25,
                                      **({} if clock is None else {"clock": clock}))
        self.tl = Timeline(st.video, st.encoder, self.spool, None, replannable=True, streams=self.streams)
        self.la = Lookahead(64)
        self.air_at: int | None = None
        self.rp = Replanner(self.tl, self.la, poll_s=0.001, air_frame=lambda: self.air_at, rate=lambda: 0.5,
                            within_chunk=False)
        self.aired: list = []

    def render(self, n: int) -> list:
        out = []
        for _ in range(n):
            c = self.rp.next_chunk()
            out.append(c)
            frames = np.zeros((c.n_frames, 2, 2, 3), np.uint8)
            assert self.rp.put(RenderedChunk(c, frames, "t", 0.0), threading.Event())
        return out

    def flush(self) -> list:
        while len(self.la):
            self.aired.append(self.la.get_nowait().chunk)
        return self.aired


def _levels(chunks) -> np.ndarray:
    return np.round(np.concatenate([c.audio[:, 0] for c in chunks]) * 32768 / 512).astype(int)


def _starts(chunks, kind: str = "started") -> dict[str, int]:
    return {m.segment_id: m.frame for c in chunks for m in c.marks if m.kind == kind}


def test_a_clip_into_an_idle_room_starts_with_its_lead_in_and_one_behind_it_with_whole_chunks(tmp_path) -> None:
    r = Room(tmp_path)
    r.render(2)  # idle: whole chunks
    a = add_level_clip(r.spool, 1, 2.0)
    b = add_level_clip(r.spool, 2, 1.0)
    r.render(5)
    aired = r.flush()
    assert [c.n_frames for c in aired] == [CF, CF, 8, 16, CF, CF, CF]
    assert [c.start_frame for c in aired[1:]] == [c.start_frame + c.n_frames for c in aired[:-1]]
    starts = _starts(aired)
    assert starts[a] == 2 * CF and starts[b] == 2 * CF + 50, "B follows A mid-chunk: no lead-in of its own"
    lv = _levels(aired)
    assert (lv[: 2 * CF * SPF] == 0).all() and (lv[2 * CF * SPF: 2 * CF * SPF + 96000] == 1).all()
    assert (lv[2 * CF * SPF + 96000: 2 * CF * SPF + 144000] == 2).all(), "the audio stays contiguous"
    r.spool.close()


def test_a_short_clip_ends_inside_its_lead_in_and_the_ramp_runs_on_as_planned(tmp_path) -> None:
    r = Room(tmp_path)
    a = add_level_clip(r.spool, 1, 0.2)  # 5 frames: ends inside the first 8-frame chunk
    r.render(3)
    aired = r.flush()
    assert [c.n_frames for c in aired] == [8, 16, CF]
    assert _starts(aired, "finished")[a] == 4 and aired[1].idle
    r.spool.close()


def test_an_enqueue_replan_cuts_its_first_chunk_at_the_lead_in_length_and_the_clip_starts_there(tmp_path) -> None:
    r = Room(tmp_path)
    r.render(5)  # idle buffered
    r.aired.append(r.la.get_nowait().chunk)  # chunk 0 on air
    r.air_at = 3
    with r.rp.editing("enqueue"):
        a = add_level_clip(r.spool, 1, 3.0)
    planned = r.rp.last["from_frame"]
    assert planned == CF  # the first boundary of the buffered idle not on air
    r.render(4)
    aired = r.flush()
    after = [c for c in aired if c.start_frame >= planned]
    assert [c.n_frames for c in after] == [8, 16, CF, CF]
    assert _starts(aired)[a] == planned
    assert [c.start_frame for c in aired[1:]] == [c.start_frame + c.n_frames for c in aired[:-1]]
    r.spool.close()


def test_a_replan_with_nothing_to_start_still_cuts_its_ramp(tmp_path) -> None:
    """The replanner counted on the ramp's render times for the re-plan's first chunks, so they are short whatever
    they hold (here idle after a cancel)."""
    r = Room(tmp_path)
    x = add_level_clip(r.spool, 1, 10.0)
    r.render(4)
    r.aired.append(r.la.get_nowait().chunk)
    r.air_at = 3
    with r.rp.editing("cancel", x):
        r.spool.cancel(x)
    r.render(3)
    aired = r.flush()
    frame = r.rp.last["from_frame"]
    assert [c.n_frames for c in aired if c.start_frame >= frame] == [8, 16, CF]
    assert all(c.idle for c in aired if c.start_frame >= frame)
    r.spool.close()


def test_play_now_inside_a_lead_in_starts_a_ramp_of_its_own_and_every_rewind_starts_one(tmp_path) -> None:
    r = Room(tmp_path)
    a = add_level_clip(r.spool, 1, 4.0)
    r.render(3)  # A: 8, 16, 28
    r.aired.append(r.la.get_nowait().chunk)  # A's first 8 frames on air
    r.air_at = 2
    with r.rp.editing("play_now"):
        b = add_level_clip(r.spool, 2, 2.0, "play_now")
    r.render(4)
    aired = r.flush()
    # renderable from frame 2 + one whole chunk (0.56 s) + the cut slack: the boundary after A's 16-frame chunk
    assert r.rp.last["from_frame"] == 24
    assert [c.n_frames for c in aired] == [8, 16, 8, 16, CF, CF]
    starts = _starts(aired)
    assert starts[b] == 24 and starts[a] == 24 + 50, "A replays from its start after B, mid-chunk: no lead-in"
    # a rewind inside A's ramp: the re-cut future is a ramp again, A going on where it was
    r2 = Room(tmp_path / "two")
    add_level_clip(r2.spool, 1, 4.0)
    first = r2.render(3)
    r2.tl.rewind(first[1].start_frame)
    again = r2.render(3)
    assert [c.n_frames for c in first] == [8, 16, CF] and [c.n_frames for c in again] == [8, 16, CF]
    assert np.array_equal(_levels(again)[: 8 * SPF], _levels(first[1:])[: 8 * SPF])
    r.spool.close()
    r2.spool.close()


def test_a_stream_starts_once_its_first_lead_in_chunk_and_the_prebuffer_arrived(tmp_path) -> None:
    r = Room(tmp_path, prebuffer_s=0.2)
    sid = r.streams.open({}, "enqueue", None, format="pcm_s16le", sample_rate=48000, channels=2, declared_s=None,
                         peer="test").entry.segment_id
    r.streams.append(sid, 0, level_pcm(3, 8 / 25))  # the first lead-in chunk, short of its prebuffer
    c0 = r.tl.next_chunk()
    assert c0.idle and c0.n_frames == CF
    r.streams.append(sid, 1, level_pcm(3, 0.2))
    c1 = r.tl.next_chunk()
    assert c1.n_frames == 8 and [m.kind for m in c1.marks] == ["started"]
    r.spool.close()


def test_a_stream_at_real_time_pace_waits_as_long_as_the_lead_in_gains(tmp_path) -> None:
    """A producer at 1x could not keep up with a clip that airs sooner (pauses inside it): it starts on the same
    audio as without a lead-in, plus what the lead-in gains (the admission's numbers)."""
    now = [0.0]
    r = Room(tmp_path, prebuffer_s=0.2, clock=lambda: now[0])
    adm = Admission(chunk_s=CF / 25, fps=25, base_chunks=3, capacity_s=60.0, margin=0.0,
                    buffered_s=lambda: 10.0)  # plenty buffered: only the stream's audio decides
    adm.observe(0.7, CF)
    adm.observe(0.3, 8)
    adm.observe(0.45, 16)
    r.tl.admission = adm
    ready: list[str] = []
    ready_at: list[float] = []
    r.streams.on_ready = lambda s, mode: (ready.append(s), ready_at.append(r.streams.live(s).seconds))
    gain = adm.lead_in_gain_s(LEAD)
    assert gain == pytest.approx(0.7 - max(0.3, 0.75 - 8 / 25, 0.75 + 0.7 - 24 / 25))
    sid = r.streams.open({}, "enqueue", None, format="pcm_s16le", sample_rate=48000, channels=2, declared_s=None,
                         peer="test").entry.segment_id
    got = 0.0
    for i in range(15):  # 0.2 s pieces at real-time pace: 3 s of audio
        now[0] = i * 0.2
        r.streams.append(sid, i, level_pcm(4, 0.2))
        got += 0.2
        c = r.tl.next_chunk()
        if c.marks:
            break
    assert got == pytest.approx(math.ceil((CF / 25 + 0.2 + gain) / 0.2) * 0.2), "started on the old audio + the gain"
    assert ready == [sid] and ready_at == [pytest.approx(got)], "the plan is told when it may start, not before"
    assert c.n_frames == 8 and [m.kind for m in c.marks] == ["started"], "a whole chunk, shrunk to the lead-in"
    r.spool.close()


def _brute_head_start(adm: Admission, clip_s: float, lead: tuple[int, ...]) -> float:
    """Chunk by chunk: chunk k is ready after the renders of 0..k and airs after the air of 0..k-1; plus the slack
    of a whole chunk's plan (margin x its measured render), which a short chunk's margin does not give."""
    lengths = list(lead)
    while sum(lengths) / 25 < clip_s:
        lengths.append(CF)
    need = ready = aired = 0.0
    for n in lengths:
        ready += adm.chunk_render_s(n)
        need = max(need, ready - aired)
        aired += n / 25
    return need + adm.margin * adm.rate.value * CF / 25


@pytest.mark.parametrize("rate, clip_s", [(0.5, 0.3), (0.5, 3.0), (0.7, 12.0), (1.3, 5.0), (2.0, 40.0)])
def test_the_head_start_with_a_lead_in_is_the_chunk_by_chunk_schedule(rate: float, clip_s: float) -> None:
    adm = Admission(chunk_s=CF / 25, fps=25, base_chunks=3, capacity_s=60.0, margin=0.25, buffered_s=lambda: 0.0)
    adm.rate.observe(rate * CF / 25, CF / 25)
    assert adm.chunk_render_s(8) == pytest.approx(rate * CF / 25 * 1.25), "unmeasured: a whole chunk's time"
    adm.observe(0.3 * rate, 8)
    adm.observe(0.5 * rate, 16)
    assert adm.chunk_render_s(16) == pytest.approx(0.5 * rate * 1.25)
    assert adm.chunk_render_s(CF) == pytest.approx(rate * CF / 25 * 1.25)
    assert adm.rate.value == pytest.approx(rate), "shorter chunks do not move the whole-chunk rate"
    for lead in [(8,), (8, 16), (16,)]:
        assert adm.head_start_s(clip_s, lead) == pytest.approx(_brute_head_start(adm, clip_s, lead)), lead
    # a re-plan's first chunks: the ramp and the whole chunk after it, each in time for the air
    ramp = _brute_head_start(adm, (8 + 16 + CF) / 25, (8, 16))
    assert adm.first_chunks_s((8, 16)) == pytest.approx(ramp) and adm.first_chunks_s(()) == adm.chunk_render_s(CF)
    # the lead-in is what makes the first frame sooner: with measured short chunks, never a longer head start
    assert adm.head_start_s(clip_s, (8, 16)) <= adm.head_start_s(clip_s) + 1e-9 or rate > 1
    c = CF / 25
    r = rate * 1.25
    n = math.ceil(clip_s / c) + 1
    assert adm.head_start_s(clip_s) == pytest.approx(max(r * c, n * r * c - (n - 1) * c)), "no lead: as before"


def test_a_renderer_change_forgets_the_short_chunk_times() -> None:
    adm = Admission(chunk_s=CF / 25, fps=25, base_chunks=3, capacity_s=60.0, margin=0.0, buffered_s=lambda: 0.0)
    adm.observe(0.8, CF)
    adm.observe(0.3, 8)
    adm.rate.restart(None)
    adm.observe(0.9, CF)
    assert adm.chunk_render_s(8) == pytest.approx(0.9), "the new renderer's short chunks are not measured yet"
    assert list(itertools.islice(adm.rate.short, 1)) == []


def test_a_lead_in_length_may_repeat_and_the_ramp_is_cut_as_given(tmp_path) -> None:
    """A ramp such as [8, 8, 16]: a length repeated keeps each chunk within the air of the one before where the next
    length up would not (the render's fixed cost per chunk); a falling ramp is refused as a setting."""
    r = Room(tmp_path, lead=(8, 8, 16))
    r.render(1)
    a = add_level_clip(r.spool, 1, 3.0)
    r.render(5)
    aired = r.flush()
    assert [c.n_frames for c in aired] == [CF, 8, 8, 16, CF, CF]
    assert _starts(aired)[a] == CF
    adm = Admission(chunk_s=CF / 25, fps=25, base_chunks=2, capacity_s=8.0, margin=0.0, buffered_s=lambda: 0.0)
    adm.rate.value = 0.5
    adm.rate.short = {8: 0.3, 16: 0.45}
    # chunk by chunk: ready 0.3, 0.6, 1.05, then the whole ones; aired before each 0, 0.32, 0.64
    assert adm.first_chunks_s((8, 8, 16)) == pytest.approx(max(0.3, 0.6 - 0.32, 1.05 - 0.64))
    for bad in ([16, 8], [8, 12, 8]):
        with pytest.raises(ValueError, match="not falling"):
            Settings(state_dir="/nonexistent-state", video={"lead_in_frames": bad})


def _measured_admission(lead=LEAD, short=None) -> Admission:
    adm = Admission(chunk_s=CF / 25, fps=25, base_chunks=3, capacity_s=60.0, margin=0.0, buffered_s=lambda: 60.0,
                    lead_in=lead)
    adm.rate.value = 0.5
    adm.rate.short = dict(short or {})
    return adm


def test_the_admission_orders_the_lengths_into_the_ramp_with_the_shortest_head_start() -> None:
    """Until every length has a time the ramp is the lengths as listed; then the non-falling ramp of them (a length
    may repeat) whose first chunks plan the shortest head start, re-chosen when the times move."""
    adm = _measured_admission(short={8: 0.3})
    assert adm.ramp() == LEAD, "16 not measured yet: as listed"
    adm.rate.short[16] = 0.45  # the fixed cost of a chunk (8 frames: 0.3 s for 0.32 s of air) favours short repeats
    brute = min(itertools.chain([(), LEAD], (r for k in range(1, 7)
                                         for r in itertools.combinations_with_replacement(LEAD, k))),
                key=lambda r: (round(adm.first_chunks_s(r), 2), len(r)))
    assert adm.ramp() == brute != LEAD
    assert adm.first_chunks_s(adm.ramp()) < adm.first_chunks_s(LEAD) - 0.05
    adm.rate.short[8] = 0.6  # now an 8-frame chunk renders in twice its air: the ramp changes with it
    assert 8 not in adm.ramp() or adm.ramp() != brute
    assert adm.status()["lead_in_ramp"] == list(adm.ramp())
    adm.rate.short = {8: 0.55, 16: 0.56}  # as slow as a whole chunk: no ramp plans sooner, so none is cut
    assert adm.ramp() == () and adm.lead_in_gain_s(adm.ramp()) == 0.0


def test_the_timeline_cuts_the_ramp_the_admission_chose(tmp_path) -> None:
    """A clip into an idle room and a re-plan both start with `Admission.ramp()`, the ramp the replanner's first
    chunks are planned with (the Room's gate without a lead-in leaves the lengths as listed: the tests above)."""
    adm = _measured_admission(short={8: 0.3, 16: 0.45})
    chosen = adm.ramp()
    assert chosen != LEAD
    r = Room(tmp_path)
    r.tl.admission = adm
    r.render(1)
    a = add_level_clip(r.spool, 1, 10.0)
    r.render(len(chosen) + 1)
    aired = r.flush()
    assert [c.n_frames for c in aired] == [CF, *chosen, CF] and _starts(aired)[a] == CF
    r2 = Room(tmp_path / "two")
    r2.tl.admission = adm
    r2.render(5)  # idle buffered
    r2.aired.append(r2.la.get_nowait().chunk)
    r2.air_at = 3
    with r2.rp.editing("enqueue"):
        b = add_level_clip(r2.spool, 1, 10.0)
    frame = r2.rp.last["from_frame"]
    r2.render(len(chosen) + 1)
    after = [c for c in r2.flush() if c.start_frame >= frame]
    assert [c.n_frames for c in after] == [*chosen, CF] and _starts(after)[b] == frame
    r.spool.close()
    r2.spool.close()


def _stream_into_a_measured_room(tmp_path) -> tuple[Room, list[float], list[float], str]:
    """A room whose admission measured 8 frames at 0.6 s and 16 at 0.45 s (prebuffer 0.2 s, a clock the test
    moves), a stream opened into it, and the audio seconds it held when the plan was told it may start."""
    now = [0.0]
    r = Room(tmp_path, prebuffer_s=0.2, clock=lambda: now[0])
    r.tl.admission = _measured_admission(short={8: 0.6, 16: 0.45})
    told: list[float] = []
    r.streams.on_ready = lambda s, mode: told.append(r.streams.live(s).seconds)
    sid = r.streams.open({}, "enqueue", None, format="pcm_s16le", sample_rate=48000, channels=2, declared_s=None,
                         peer="test").entry.segment_id
    return r, now, told, sid


def test_a_fast_stream_is_ready_when_the_chunk_the_timeline_cuts_for_it_can_start(tmp_path) -> None:
    """The registry tells the plan a stream may start (`on_ready`: a re-plan) on the audio of the ramp's first chunk,
    the admission's choice, not the first length listed: told on less, the re-plan found it not startable and the
    stream waited behind the idle buffered meanwhile (an H100 run with [16, 20]: the ramp [20, ...], 4x streams
    0.3 s later than without a lead-in)."""
    r, now, told, sid = _stream_into_a_measured_room(tmp_path)
    assert r.tl.admission.ramp()[0] == 16, "8-frame chunks as slow as 16: the ramp starts at 16"
    assert r.streams.first_chunk_s() == pytest.approx(16 / 25)
    for i in range(8):  # 0.12 s pieces every 0.03 s: a producer at 4x
        now[0] = i * 0.03
        r.streams.append(sid, i, level_pcm(3, 0.12))
    assert told == [pytest.approx(0.84)], "told once its first 16 frames and the prebuffer arrived (0.84 s)"
    with r.rp.editing("enqueue"):
        pass
    c = r.tl.next_chunk()
    assert c.n_frames == 16 and [m.kind for m in c.marks] == ["started"], "startable in the chunk cut for it"
    r.spool.close()


def test_the_live_chunk_is_the_measured_length_that_keeps_up_and_airs_its_audio_soonest() -> None:
    adm = _measured_admission(short={8: 0.3})
    assert adm.live_chunk_frames() == 8, "0.3 s for 0.32 s of air: keeps up, airs 0.62 s after its first audio"
    adm.rate.short[16] = 0.45
    assert adm.live_chunk_frames() == 8, "16 keeps up too but airs later (0.64 + 0.45 s)"
    adm.rate.short[8] = 0.4  # now slower than its air: a producer at real time would outrun it
    assert adm.live_chunk_frames() == 16
    adm.margin = 0.5  # planned with the margin, 16 frames need 0.675 s for 0.64 s of air
    assert adm.live_chunk_frames() is None
    assert adm.status()["live_chunk_frames"] is None
    assert _measured_admission().live_chunk_frames() is None, "no length measured yet: whole chunks"
    none = Admission(chunk_s=CF / 25, fps=25, base_chunks=3, capacity_s=60.0, margin=0.0, buffered_s=lambda: 0.0,
                     lead_in=LEAD)
    assert none.live_chunk_frames() is None, "no render measured at all"


def test_a_stream_at_real_time_pace_starts_on_a_live_chunk_and_is_cut_in_them_until_it_is_ahead(tmp_path) -> None:
    """A producer at 1x: the stream starts once one live chunk and the prebuffer arrived (0.84 s, not a whole chunk,
    the prebuffer and the lead-in's gain), is cut into live chunks while it holds less than a whole chunk, every
    sample in order with no pause, and into whole chunks once it is ahead (closed)."""
    r, now, told, sid = _stream_into_a_measured_room(tmp_path)
    assert r.streams.live_chunk_s() == pytest.approx(16 / 25)
    piece, i, cut = 0.04, 0, []
    while not cut or sum(c.n_frames for c in cut) < 3 * 16:
        now[0] = i * piece  # 40 ms pieces at real-time pace
        r.streams.append(sid, i, level_pcm(5, piece))
        i += 1
        if r.streams.live(sid).seconds + 1e-9 >= (sum(c.n_frames for c in cut) + 16) / 25 + 0.2:
            c = r.tl.next_chunk()  # a live chunk is due once its audio is there (the replanner's due wait)
            if cut or c.marks:
                cut.append(c)
    assert told == [pytest.approx(0.84)], "ready on one live chunk and the prebuffer"
    assert [m.kind for m in cut[0].marks] == ["started"] and cut[0].marks[0].frame == cut[0].start_frame
    assert [c.n_frames for c in cut] == [16, 16, 16]
    r.streams.append(sid, i, level_pcm(5, 2.0))
    r.streams.close(sid)
    rest = [r.tl.next_chunk() for _ in range(2)]
    assert [c.n_frames for c in rest] == [CF, CF], "closed (ahead): whole chunks"
    lv = _levels(cut + rest)
    clip = i * piece + 2.0
    assert (lv[: int(round(clip * 48000))] == 5).all() and (lv[int(round(clip * 48000)):] == 0).all(), \
        "every sample in order, no pause inside the clip"
    assert r.tl.starved_samples == 0
    r.spool.close()


def test_a_live_chunk_waits_for_its_audio_only_while_a_whole_chunk_could_still_render_in_time(tmp_path) -> None:
    """The due wait of a stream cut in live chunks counts a whole chunk's render, not the live one's: the stream may
    close (or jump ahead) during the wait and its next chunk is then whole, which must still render in time."""
    r, now, _told, sid = _stream_into_a_measured_room(tmp_path)
    r.streams.append(sid, 0, level_pcm(5, 16 / 25 + 0.2))
    first = r.tl.next_chunk()
    assert first.n_frames == 16 and [m.kind for m in first.marks] == ["started"]
    assert r.tl.next_frames == 16 and r.tl.stream_shortfall() > 0, "a live chunk next, its audio not all there"
    buffered = [2.0]

    def drain() -> float:  # the air moves on while the producer is silent
        buffered[0] -= 0.01
        return buffered[0]

    render = {16: 0.45, CF: 0.56}
    rp = Replanner(r.tl, r.la, poll_s=0.001, buffered_s=drain, render_s=lambda n: render.get(n), due_margin_s=0.2)
    rp._await_stream()
    assert buffered[0] == pytest.approx(render[CF] + 0.2, abs=0.011), "cut once a whole chunk's render is due"
    r.spool.close()


def test_a_slow_stream_whose_ramp_starts_longer_than_its_live_chunk_waits_for_the_ramps_first(tmp_path) -> None:
    """Times near the H100's (16 frames 0.51 s, 20 frames 0.544 s, whole 0.778 s, margin 0.25): the ramp starts at 20
    frames while 16 keeps up live. A re-plan cuts the ramp's first chunk for the stream, so it is ready on 20 frames
    and the prebuffer, not 16: a first chunk longer than the audio there would be cut with a pause in the speech."""
    adm = _measured_admission(lead=(16, 20), short={16: 0.51, 20: 0.544})
    adm.rate.value, adm.margin = 0.695, 0.25
    assert adm.ramp()[0] == 20 and adm.live_chunk_frames() == 16
    now = [0.0]
    r = Room(tmp_path, lead=(16, 20), prebuffer_s=0.2, clock=lambda: now[0])
    r.tl.admission = adm
    told: list[float] = []
    r.streams.on_ready = lambda s, mode: told.append(r.streams.live(s).seconds)
    sid = r.streams.open({}, "enqueue", None, format="pcm_s16le", sample_rate=48000, channels=2, declared_s=None,
                         peer="test").entry.segment_id
    for i in range(30):  # 40 ms pieces at real-time pace
        now[0] = i * 0.04
        r.streams.append(sid, i, level_pcm(5, 0.04))
    assert told == [pytest.approx(20 / 25 + 0.2)]
    r.spool.close()
