"""Re-planning the render-ahead buffer (playout/replan.py) with a real spool, a real look-ahead and the timeline:
what each edit discards, what goes back to the queue, and what is cut where. Audio levels label the clips."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from flashtalk_live.playout.admission import Admission
from flashtalk_live.playout.pacing import Lookahead, Pacer
from flashtalk_live.queue.spool import Spool
from flashtalk_live.chunks import RenderChunk, RenderedChunk
from flashtalk_live.playout.plan import plan_on_air
from flashtalk_live.playout.replan import CUT_SLACK_S, Replanner
from flashtalk_live.playout.timeline import Timeline

from support.level_clips import add_level_clip
from support.replan_room import Room

CF = 28  # frames per chunk (default), 1.12 s at 25 fps



def test_play_now_cuts_at_the_air_boundary_and_nothing_acknowledged_is_lost(tmp_path):
    r = Room(tmp_path)
    x = add_level_clip(r.spool, 1, 3.0)
    a = add_level_clip(r.spool, 2, 1.0)
    r.render(5)  # X, A and some idle are buffered
    r.air()  # chunk 0 (X) is on air
    # insert A2, then play_now B: the buffered A is pending again when the edits see the queue.
    with r.rp.editing("insert"):
        a2 = add_level_clip(r.spool, 3, 0.5, "insert")
    assert [e.segment_id for e in r.spool.pending()] == [a2, a]  # A2 before the enqueued A
    stale = r.rp.next_chunk()  # a chunk being rendered when play_now comes in
    with r.rp.editing("play_now"):
        b = add_level_clip(r.spool, 4, 0.5, "play_now")
    assert not r.rp.put(RenderedChunk(stale, np.zeros((CF, 2, 2, 3), np.uint8), "t", 0.0), r.stop)
    assert len(r.la) == 0 and r.la.next_air_frame == CF
    r.render(10)
    aired = r.flush()
    marks = [(m.kind, m.segment_id, m.frame, m.requeued) for c in aired for m in c.marks]
    # B starts on the first frame after the chunk on air; X is cut there and requeued, then replays from its start.
    assert ("interrupted", x, CF, True) in marks and ("started", b, CF, False) in marks
    assert r.order() == [x, b, x, a2, a]
    starts = [c.start_frame for c in aired]
    assert starts == list(range(0, CF * len(aired), CF)), "the air is contiguous across the re-plan"
    lev = {sid: lvl for sid, lvl in ((x, 1), (b, 4), (a2, 3), (a, 2))}
    # Every frame of X's replay carries X's audio from its start: 3 s of level 1 after B's 0.5 s.
    audio = np.concatenate([c.audio for c in aired[1:]])[:, 0]
    i0 = int(0.5 * 48000)
    assert np.all(audio[:i0] == lev[b] / 64) and np.all(audio[i0:i0 + 3 * 48000] == lev[x] / 64)
    r.spool.close()


def test_cancel_of_the_clip_on_air_cuts_at_the_air_boundary_and_the_next_clip_follows(tmp_path):
    r = Room(tmp_path)
    x = add_level_clip(r.spool, 1, 4.0)
    a = add_level_clip(r.spool, 2, 1.0)
    r.render(6)
    r.air(2)
    with r.rp.editing("cancel", x):
        assert r.spool.cancel(x) == "playing"
    r.render(4)
    aired = r.flush()
    cut = [m for c in aired for m in c.marks if m.kind == "interrupted"]
    assert [(m.segment_id, m.frame, m.requeued) for m in cut] == [(x, 2 * CF, False)]
    assert r.order() == [x, a]
    assert np.all(aired[2].audio[:, 0] != 1 / 64), "no buffered frame of the cancelled clip airs after the cut"
    assert r.spool.get(x).state == "playing"  # deleted when the cut airs (the daemon settles it)
    r.spool.close()


def test_cancel_of_a_buffered_clip_and_clear_keep_the_clip_on_air(tmp_path):
    r = Room(tmp_path)
    x = add_level_clip(r.spool, 1, 3.0)
    a = add_level_clip(r.spool, 2, 1.0)
    c = add_level_clip(r.spool, 3, 1.0)
    r.render(6)  # X (3 chunks), A, C cut
    r.air()
    with r.rp.editing("cancel", a):
        assert r.spool.cancel(a) == "pending"  # buffered, not on air: it counts as pending
    # X (75 frames) fills chunk 1 alone; chunk 2 holds X's end and A: the re-plan starts there, X keeps chunk 1.
    assert len(r.la) == 1 and r.la.next_air_frame == CF and r.tl.frame == 2 * CF
    r.render(1)
    with r.rp.editing("clear"):
        assert r.spool.clear() == [c]
    r.render(4)
    r.flush()
    assert r.order() == [x]
    assert r.spool.pending() == []
    r.spool.close()


def test_planned_starts_follow_the_buffer_the_queue_and_the_render_rate():
    hs = lambda d: 0.0  # noqa: E731 - a renderer at real time needs no head start
    p = plan_on_air(fps=25, air_frame=100, cut_frame=150, cut_remaining_s=1.0, buffered=[("x", 125)],
                    pending=[("a", 3.0), ("b", 2.0)], rate=1.0, head_start=hs)
    assert [(q.segment_id, round(q.in_s, 2), q.state) for q in p] == [("x", 1.0, "buffered"), ("a", 3.0, "pending"),
                                                                      ("b", 6.0, "pending")]
    # A renderer 3x slower than real time: a's start waits for its head start after the cut clip is rendered.
    slow = plan_on_air(fps=25, air_frame=100, cut_frame=100, cut_remaining_s=1.0, buffered=[],
                       pending=[("a", 3.0)], rate=3.0, head_start=lambda d: 2 * d)
    assert slow[0].in_s == 3.0 + 6.0 and slow[0].waits == "head_start"


def test_enqueue_into_an_idle_room_replans_buffered_idle_but_never_buffered_clips(tmp_path):
    r = Room(tmp_path)
    r.render(5)  # an idle room: five idle chunks buffered
    r.air()
    with r.rp.editing("enqueue"):
        a = add_level_clip(r.spool, 1, 2.0)
    assert len(r.la) == 0, "the buffered idle chunks were dropped"
    r.render(3)
    aired = r.flush()
    assert [(m.frame, m.segment_id) for c in aired for m in c.marks if m.kind == "started"] == [(CF, a)]  # right
    # after the chunk on air
    b = r.spool.pending()  # A was taken while cutting: nothing pending
    assert b == []
    # X on air, A buffered (not on air), then idle: enqueue keeps A's chunks (queue-only) and re-plans the idle.
    r2 = Room(tmp_path / "two")
    x = add_level_clip(r2.spool, 2, CF / 25)  # exactly chunk 0
    a2 = add_level_clip(r2.spool, 3, 2 * CF / 25)  # chunks 1 and 2
    r2.render(5)  # X, A, A, idle, idle
    r2.air()
    with r2.rp.editing("enqueue"):
        y = add_level_clip(r2.spool, 4, 1.0)
    assert len(r2.la) == 2 and r2.rp.replans == 1, "A's buffered chunks stay, the idle ones go"
    assert r2.rp.last["from_frame"] == 3 * CF
    r2.render(3)
    r2.flush()
    assert r2.order() == [x, a2, y]
    r.spool.close()
    r2.spool.close()


def test_an_enqueue_keeps_a_clip_cut_behind_buffered_idle_and_the_idle_before_it(tmp_path):
    """A clip that waited for its head start was cut after idle; a later enqueue goes after it, so neither that
    clip's rendered chunks nor the idle before it are re-planned (doing so made the clip wait again)."""
    r = Room(tmp_path)
    r.render(3)  # idle 0-2
    r.air()  # chunk 0 on air
    a = add_level_clip(r.spool, 1, 2 * CF / 25)  # pushed with no re-plan: cut behind the buffered idle
    r.render(3)  # A in chunks 3 and 4, idle in 5
    with r.rp.editing("enqueue"):
        b = add_level_clip(r.spool, 2, 1.0)
    assert r.rp.last["from_frame"] == 5 * CF and r.rp.last["returned"] == []
    assert len(r.la) == 4 and r.la.chunk_at(5 * CF) is None  # idle 1-2 and A's 3-4 stay
    assert set(r.la.chunk_at(3 * CF).frame_segments) == set(r.la.chunk_at(4 * CF).frame_segments) == {a}
    r.render(3)
    r.flush()
    assert r.order() == [a, b]
    starts = {m.segment_id: m.frame for c in r.aired for m in c.marks if m.kind == "started"}
    assert starts == {a: 3 * CF, b: 5 * CF}
    r.spool.close()


def test_the_recut_future_follows_what_stays_on_air(tmp_path):
    """After a re-plan the next chunk is conditioned on the chunk it follows on air (playout/renderahead.py): the
    newest kept buffered chunk, or the chunk on air when everything buffered was dropped."""
    r = Room(tmp_path)
    x = add_level_clip(r.spool, 1, 3 * CF / 25)  # chunks 0-2
    a = add_level_clip(r.spool, 2, 1.0)
    r.render(5)
    r.air()  # chunk 0 on air
    with r.rp.editing("insert"):
        add_level_clip(r.spool, 3, 0.5, "insert")
    plan, tail = r.rp.rebase_point
    assert plan == r.rp.plan == 1
    assert tail.chunk.start_frame == 2 * CF and tail.frames.shape[0] == CF  # X's last buffered chunk
    with r.rp.editing("play_now"):
        add_level_clip(r.spool, 4, 0.5, "play_now")
    plan, tail = r.rp.rebase_point
    assert plan == 2 and tail is r.la.last_taken and tail.chunk.start_frame == 0  # only the chunk on air is left
    assert x != a
    r.spool.close()


def _levels(chunks) -> np.ndarray:
    """The clip level airing on each frame (audio 1/64 per level; 0 idle)."""
    audio = np.concatenate([c.audio[:, 0] for c in chunks])
    return np.round(audio.reshape(-1, 1920)[:, 0] * 64).astype(int)


@pytest.mark.parametrize("within_chunk", [True, False])
def test_enqueue_into_an_idle_room_replans_inside_the_buffered_chunk_the_renderer_can_still_reach(tmp_path,
                                                                                                 within_chunk):
    r = Room(tmp_path, within_chunk=within_chunk)
    r.render(5)  # idle
    r.air()  # chunk 0 on air
    # The pacer at frame 20; a chunk renders in 1.12 s, and the cut comes up to CUT_SLACK_S later: frame 50 is the
    # first in reach.
    r.air_at, r.rate = 20, 1.0
    with r.rp.editing("enqueue"):
        a = add_level_clip(r.spool, 3, 1.0)
    start = 50 if within_chunk else 2 * CF
    assert r.rp.last["from_frame"] == start and r.rp.splits == int(within_chunk)
    if within_chunk:
        assert len(r.la) == 1 and r.la.buffered_frames == 22, "chunk 1 keeps its first 22 frames"
        assert r.la.tail().frames.shape[0] == 22, "the re-cut future follows the kept frames"
    r.render(3)
    aired = r.flush()
    assert [c.start_frame for c in aired[1:]] == [c.end_frame for c in aired[:-1]], "the air stays contiguous"
    assert [(m.kind, m.frame) for c in aired for m in c.marks if m.segment_id == a][0] == ("started", start)
    lv = _levels(aired)
    assert not lv[:start].any() and (lv[start:start + 25] == 3).all(), "A's audio from its first frame on"
    r.spool.close()


def test_a_clip_is_admitted_at_the_replan_point_though_the_air_moved_on_before_the_cut(tmp_path):
    """The render thread cuts a moment after the re-plan, and admission checks the head start then: the air one
    frame further on must not push the clip a whole chunk back (the H100's bimodal enqueue into an idle room)."""
    r = Room(tmp_path)
    adm = Admission(chunk_s=CF / 25, fps=25, base_chunks=3, capacity_s=10.0, margin=0.0,
                    buffered_s=lambda: (r.tl.frame - r.air_at) / 25)  # held up to the timeline's end, all rendered
    adm.rate.observe(CF / 25, CF / 25)  # real time exactly: one chunk renders in one chunk of air
    r.tl.admission = adm
    r.rp.rate = lambda: adm.planning_rate
    r.render(5)  # idle
    r.air()
    r.air_at = 20
    with r.rp.editing("enqueue"):
        a = add_level_clip(r.spool, 3, 1.0)
    planned = r.rp.last["from_frame"]
    r.air_at += 1  # the pacer released a frame before the render thread cut
    r.render(2)
    started = [m.frame for c in r.flush() for m in c.marks if m.segment_id == a and m.kind == "started"]
    assert started == [planned] and adm.refusals == 0
    r.spool.close()


def test_a_replan_inside_the_chunk_on_air_ends_it_early_on_the_pacer(tmp_path):
    """Nothing buffered beyond the chunk on air: the pacer ends that chunk at the re-plan's frame and goes on with
    the re-cut future, every timeline frame aired once, in order."""
    r = Room(tmp_path)
    r.render(1)
    pacer = Pacer(r.la, 25, 1920, 2, clock=lambda: 0.0, sleep=lambda s: None)
    out = [next(pacer) for _ in range(6)]  # frames 0-5 of chunk 0 aired
    r.air_at = pacer.air_frame
    with r.rp.editing("enqueue"):
        a = add_level_clip(r.spool, 2, 1.0)
    assert r.rp.last["from_frame"] == 11 and r.la.on_air_end == 11  # frame 6 + the due margin (0.2 s)
    r.render(3)
    out += [next(pacer) for _ in range(60)]
    assert [p.timeline_frame for p in out] == list(range(66)) and not any(p.underrun for p in out)
    assert [(m.kind, p.timeline_frame) for p in out for m in p.marks] == [("started", 11), ("finished", 35)]
    assert all(p.segment_id == (a if 11 <= p.timeline_frame <= 35 else None) for p in out)
    r.spool.close()


def test_play_now_cuts_the_clip_on_air_at_the_first_frame_in_reach_and_replays_it(tmp_path):
    r = Room(tmp_path)
    x = add_level_clip(r.spool, 1, 4.0)
    r.render(4)  # X in chunks 0-3
    r.air()
    r.air_at, r.rate = 10, 1.0  # frame 40 (in chunk 1) is the first the renderer can reach, with the cut's slack
    with r.rp.editing("play_now"):
        b = add_level_clip(r.spool, 4, 0.5, "play_now")
    assert r.rp.last["from_frame"] == 40
    r.render(8)
    aired = r.flush()
    marks = [(m.kind, m.segment_id, m.frame, m.requeued) for c in aired for m in c.marks]
    assert ("interrupted", x, 40, True) in marks and ("started", b, 40, False) in marks
    assert r.order() == [x, b, x]
    lv = _levels(aired)
    assert (lv[:40] == 1).all() and (lv[40:40 + 12] == 4).all() and (lv[53:53 + 100] == 1).all()
    r.spool.close()


def test_a_chunk_that_took_a_clip_is_replanned_from_its_boundary(tmp_path):
    """Chunk 1 took A from the queue after X's end: cutting it again would take from the queue, so the re-plan
    keeps to the chunk boundary."""
    r = Room(tmp_path)
    x = add_level_clip(r.spool, 1, 1.5)  # ends in chunk 1
    a = add_level_clip(r.spool, 2, 3.0)
    r.render(4)
    r.air()
    r.air_at, r.rate = 10, 1.0  # frame 38, in chunk 1
    with r.rp.editing("play_now"):
        b = add_level_clip(r.spool, 4, 0.5, "play_now")
    assert r.rp.last["from_frame"] == 2 * CF and r.rp.splits == 0
    r.render(6)
    r.flush()
    assert r.order()[:3] == [x, a, b]
    r.spool.close()


def test_an_idle_bank_link_being_drawn_counts_as_the_render_in_flight(tmp_path):
    """The render thread draws a bank link (not a cut chunk) when the push comes: the re-plan point leaves room for
    that link and then the new clip's first chunk, so the clip's chunk is not due before it can be rendered."""
    r = Room(tmp_path)
    r.render(6)  # idle
    r.air()
    r.air_at, r.rate = 2, 1.0  # one chunk renders in its own air time
    r.rp.render_begins(_bank_link())  # a bank link of one chunk has just started (this renderer cannot stop it)
    with r.rp.editing("enqueue"):
        add_level_clip(r.spool, 3, 1.0)
    assert r.rp.last["from_frame"] >= 2 + 2 * CF - 1  # the link's rest (~28 frames), then the clip's chunk (28)


def _bank_link() -> RenderChunk:
    return RenderChunk(index=0, start_frame=0, n_frames=CF, audio=np.zeros((CF * 1920, 2), np.float32),
                       model_audio=np.zeros(CF * 640, np.float32), frame_segments=[None] * CF, idle=True)


def test_a_bank_link_being_drawn_is_abandoned_and_the_clip_planned_without_its_rest(tmp_path):
    """A renderer that stops an abandoned chunk within 40 ms: the push abandons the bank link (spare work) and the
    clip's first chunk is planned one render after the air, not after the link's rest as well."""
    r = Room(tmp_path)
    r.render(6)  # idle
    r.air()
    r.air_at, r.rate, r.abandon = 2, 1.0, 0.04
    link = _bank_link()
    r.rp.render_begins(link)
    with r.rp.editing("enqueue"):
        add_level_clip(r.spool, 3, 1.0)
    assert link.abandoned.is_set()
    assert 2 + CF <= r.rp.last["from_frame"] < 2 + 2 * CF - 1  # one chunk's render (+ the stop), not two
    r.rp.abandoned()
    assert r.rp.status()["renders_abandoned"] == 1


@pytest.mark.parametrize("abandon_s", [0.04, None])
def test_play_now_abandons_the_chunk_in_flight_it_discards(tmp_path, abandon_s):
    """The chunk being rendered lies after the re-plan point: it is abandoned (and dropped if it still comes back).
    A renderer that can stop it lets the plan start one render after the air; one that cannot, after its rest."""
    r = Room(tmp_path)
    add_level_clip(r.spool, 1, 6.0)
    r.render(3)
    in_flight = r.rp.next_chunk()
    r.air()
    r.air_at, r.rate, r.abandon = 2, 1.0, abandon_s
    with r.rp.editing("play_now"):
        add_level_clip(r.spool, 4, 0.5, "play_now")
    frame = r.rp.last["from_frame"]
    assert frame < in_flight.start_frame and in_flight.abandoned.is_set()
    if abandon_s is None:  # the rest of the render in flight (1.12 s) and one chunk (1.12 s) ahead of the air
        assert frame >= 2 + 2 * CF
    else:
        assert frame < 2 + 2 * CF - 1
    assert not r.rp.put(RenderedChunk(in_flight, np.zeros((CF, 2, 2, 3), np.uint8), "t", 0.0), r.stop)
    r.spool.close()


def test_the_first_chunk_in_flight_is_not_abandoned_before_the_render_rate_is_known(tmp_path):
    """Nothing measured yet: the chunk in flight is the rate's first measure (a clip's head start needs it), so a
    re-plan that discards it lets it finish; it is dropped when put."""
    r = Room(tmp_path)
    in_flight = r.rp.next_chunk()
    r.abandon = 0.04
    with r.rp.editing("enqueue"):
        add_level_clip(r.spool, 3, 1.0)
    assert r.rp.last["from_frame"] == 0 and not in_flight.abandoned.is_set()
    assert not r.rp.put(RenderedChunk(in_flight, np.zeros((CF, 2, 2, 3), np.uint8), "t", 0.0), r.stop)
    r.spool.close()


@pytest.mark.parametrize("elapsed,expected", [(0.5, 2 + 37), (0.0, 2 + 40)])
def test_the_render_in_flight_is_counted_to_its_next_step_boundary(tmp_path, elapsed, expected):
    """Steps of 0.4 s: a link 0.5 s into its render stops 0.3 s later (the push plans 0.3 + 1.12 + 0.06 s ahead of
    the air: 37 frames), one just begun 0.4 s later (40 frames)."""
    r = Room(tmp_path)
    r.render(6)  # idle
    r.air()
    r.air_at, r.rate, r.abandon = 2, 1.0, 0.4
    r.rp.render_begins(_bank_link())
    r.now += elapsed
    with r.rp.editing("enqueue"):
        add_level_clip(r.spool, 3, 1.0)
    assert r.rp.last["from_frame"] == expected and r.rp.last["within_chunk"]
    r.spool.close()


@pytest.mark.parametrize("share,elapsed,margin,expected", [(0.5, 0.5, 0.0, 2 + 37), (0.5, 0.7, 0.0, 2 + 40),
                                                           (None, 0.7, 0.0, 2 + 34), (0.5, 0.6, 0.25, 64)])
def test_a_render_past_its_denoising_runs_to_its_end(tmp_path, share, elapsed, margin, expected):
    """Steps of 0.4 s that stop an abandoned chunk only in the first half of its 1.12 s (its denoising; the decode
    after it cannot stop): 0.5 s in, it stops 0.3 s later (37 frames ahead, as above); 0.7 s in, it runs its last
    0.42 s (0.42 + 1.12 + 0.06 s: 40 frames) where a renderer stoppable throughout would stop at 0.8 s (32). The
    share is of the render's own time, not of the plan's (margin 0.25: 1.4 s planned, denoising for 0.56 s): 0.6 s
    in, it runs its planned rest (0.8 + 1.4 + 0.06 s: 57 frames, and the chunk it falls in keeps 8: frame 64), not
    to the step at 0.8 s (frame 44)."""
    r = Room(tmp_path, margin=margin)
    r.render(6)  # idle
    r.air()
    r.air_at, r.rate, r.abandon, r.share = 2, 1.0, 0.4, share
    r.rp.render_begins(_bank_link())
    r.now += elapsed
    with r.rp.editing("enqueue"):
        add_level_clip(r.spool, 3, 1.0)
    assert r.rp.last["from_frame"] == expected
    r.spool.close()


def test_a_stream_opening_keeps_buffered_idle_for_its_ready_replan_to_split(tmp_path):
    """"open" (a stream opened, no audio yet) re-plans nothing over buffered idle: a re-plan then would cut live
    idle chunks whose render the stream's ready re-plan could not stop (an H100: every 4x stream waited behind one)."""
    r = Room(tmp_path)
    r.render(5)
    r.air()
    with r.rp.editing("open"):
        pass
    assert len(r.la) == 4 and r.rp.replans == 0, "the buffered idle stays"
    with r.rp.editing("enqueue"):  # the stream became ready (here: a whole clip)
        a = add_level_clip(r.spool, 1, 2.0)
    assert len(r.la) == 0 and r.rp.replans == 1
    r.render(3)
    r.flush()
    assert r.order() == [a]
    r.spool.close()


def _programme_timeline(tmp_path, playlist: str, clip_s: float, **video) -> tuple[Spool, Timeline]:
    """A re-plannable timeline over a spool; its programme `playlist` (m3u text) of p1.wav, a clip_s-second clip."""
    from support.queue_fakes import labelled_wav
    from support.settings import load_programme, section_settings

    labelled_wav(tmp_path / "p1.wav", 1, clip_s)
    (tmp_path / "list.m3u").write_text(playlist)
    st = section_settings(video=video)
    spool = Spool(tmp_path / "spool")
    return spool, Timeline(st.video, st.encoder, spool, load_programme(tmp_path / "list.m3u", st), replannable=True)


def test_a_stream_opening_replans_a_programme_item_cut_ahead_of_the_air(tmp_path):
    """A programme item cut to start after the air would start while the stream gathers its first chunk and the
    stream would wait behind it: "open" re-plans as an enqueue and the item goes back to the programme."""
    spool, tl = _programme_timeline(tmp_path, "#EXTM3U\np1.wav\n", 5.0)
    la = Lookahead(64)
    air = [None]
    rp = Replanner(tl, la, poll_s=0.001, air_frame=lambda: air[0], rate=lambda: None, within_chunk=False)
    stop = threading.Event()
    for _ in range(3):
        c = rp.next_chunk()
        assert rp.put(RenderedChunk(c, np.zeros((c.n_frames, 2, 2, 3), np.uint8), "t", 0.0), stop)
    air[0] = 1
    assert tl.programme_ahead(air[0]) is False, "the item started in the chunk on air"
    with rp.editing("open"):
        pass
    assert rp.replans == 0
    la.get_nowait()
    for _ in range(3):  # the item ends inside chunk 4 (at 5 s), which starts it again (the playlist loops)
        c = rp.next_chunk()
        assert rp.put(RenderedChunk(c, np.zeros((c.n_frames, 2, 2, 3), np.uint8), "t", 0.0), stop)
    air[0] = 2 * CF
    assert tl.programme_ahead(air[0]), "the loop's next start is cut after the air"
    with rp.editing("open"):
        pass
    assert rp.replans == 1 and rp.last["command"] == "enqueue"
    assert not tl.programme_ahead(air[0]), "given back"
    spool.close()


def test_a_stream_opening_does_not_replan_for_a_programme_pause_cut_ahead(tmp_path):
    """A programme pause gives way to a waiting queue clip at its next chunk (and the stream's ready re-plan cuts
    into it): only a programme clip cut ahead of the air makes the open re-plan."""
    spool, tl = _programme_timeline(tmp_path, "#EXTM3U\n#EXT-X-DEFAULT-PAUSE:4\np1.wav\n", 3.0)
    la = Lookahead(64)
    air = [1]
    rp = Replanner(tl, la, poll_s=0.001, air_frame=lambda: air[0], rate=lambda: None, within_chunk=False)
    stop = threading.Event()

    def cut(n: int) -> None:
        for _ in range(n):
            c = rp.next_chunk()
            assert rp.put(RenderedChunk(c, np.zeros((c.n_frames, 2, 2, 3), np.uint8), "t", 0.0), stop)

    cut(6)  # the clip from 0 to 3 s (on air), its 4 s pause from chunk 2 (cut ahead), to 6.72 s
    assert not tl.programme_ahead(air[0]), "only a pause is cut ahead"
    with rp.editing("open"):
        pass
    assert rp.replans == 0
    cut(1)  # chunk 6 starts the clip again at 7 s
    assert tl.programme_ahead(air[0])
    with rp.editing("open"):
        pass
    assert rp.replans == 1 and rp.last["command"] == "enqueue"
    spool.close()


@pytest.mark.parametrize("command, first", [("open", CF), ("enqueue", 12)])
def test_a_stream_openings_replan_recuts_whole_chunks_where_an_enqueue_starts_the_ramp(tmp_path, command, first):
    """The open's re-cut future (idle while the stream gathers its first chunk) is cut in whole chunks (the idle
    bank serves those at no render cost, held at once for the ready re-plan to split), planned a whole chunk's
    render ahead; an enqueue's starts with the lead-in's ramp. A ramp of live idle there made every 4x stream wait behind one (H100, 88649ed)."""
    spool, tl = _programme_timeline(tmp_path, "#EXTM3U\np1.wav\n", 5.0, lead_in_frames=[12, 16])
    la = Lookahead(64)
    air = [None]
    render_s = {CF: 1.5, 12: 0.3, 16: 0.4}  # planned seconds per chunk length
    rp = Replanner(tl, la, poll_s=0.001, air_frame=lambda: air[0], rate=lambda: 1.5 * 25 / CF,
                   render_s=lambda n: render_s[n], first_chunks_s=lambda: 0.3, within_chunk=False)
    stop = threading.Event()
    for _ in range(6):
        c = rp.next_chunk()
        assert rp.put(RenderedChunk(c, np.zeros((c.n_frames, 2, 2, 3), np.uint8), "t", 0.0), stop)
    air[0] = 2 * CF
    assert tl.programme_ahead(air[0])
    with rp.editing(command):
        pass
    assert rp.replans == 1 and rp.last["command"] == "enqueue"
    # the re-plan point: the air, the first chunks' planned render (a whole chunk for the open), the cut's slack
    planned = render_s[CF] if command == "open" else 0.3
    boundary = rp.last["from_frame"]
    assert boundary >= air[0] + math.ceil((planned + CUT_SLACK_S) * 25 - 1e-9)
    assert boundary - CF < air[0] + math.ceil((planned + CUT_SLACK_S) * 25 - 1e-9), "the first boundary in reach"
    c = rp.next_chunk()
    assert c.start_frame == boundary and c.n_frames == first
    spool.close()


def test_cancel_of_a_clip_that_starts_before_the_first_frame_in_reach_silences_it(tmp_path):
    """W ends in chunk 1 and X starts there, but the renderer cannot reach chunk 1 again before it airs (frame 35 is
    the first in reach, and chunk 1 took X, so it is not cut short): X starts before the re-plan point, which makes
    it on air as far as edits are concerned, and its cancel silences it (Lookahead.cut) rather than letting its
    buffered frames air with their sound."""
    r = Room(tmp_path)
    w = add_level_clip(r.spool, 1, 1.5)  # frames 0-37
    x = add_level_clip(r.spool, 2, 0.5)  # frames 37-50, in chunk 1
    r.render(4)
    r.air()  # chunk 0 on air
    r.air_at, r.rate = 5, 1.0
    with r.rp.editing("cancel", x):
        assert r.spool.cancel(x) == "playing"
    assert r.rp.last["from_frame"] == 2 * CF
    r.render(3)
    aired = r.flush()
    assert r.order() == [w]
    assert not (_levels(aired) == 2).any(), "no frame of the cancelled clip airs with its sound"
    assert [m.kind for c in aired for m in c.marks if m.segment_id == x] == ["interrupted"]
    r.spool.close()


def _two_play_nows(r: Room, a_s: float, p2_s: float) -> tuple[str, str, str]:
    """A (level 1, `a_s` long) on air in chunk 0 of two rendered; then play_now P1 (level 2, 0.5 s) and play_now P2
    (level 3, `p2_s`), which goes before P1. Returns (A, P1, P2)."""
    a = add_level_clip(r.spool, 1, a_s)
    r.render(2)
    r.air()  # chunk 0: A on air
    with r.rp.editing("play_now"):
        p1 = add_level_clip(r.spool, 2, 0.5, "play_now")
    with r.rp.editing("play_now"):
        p2 = add_level_clip(r.spool, 3, p2_s, "play_now")  # before P1
    return a, p1, p2


def test_a_play_now_clip_taken_behind_another_does_not_cut_it_when_a_replan_gives_it_back(tmp_path):
    """Two play_now clips: P2 (the later, first in the queue) cut A, P1 follows P2 without cutting it. A re-plan
    (an insert) gives back the chunk that took P1: P1 goes back to pending as it was taken, after P2's cut, so it
    does not cut P2 (which would then replay: P2 would air twice)."""
    r = Room(tmp_path)
    a, p1, p2 = _two_play_nows(r, 3.0, 1.5)
    r.render(3)  # chunk 1 cuts A and takes P2 (to frame 65); chunk 2 takes P1 after it, then A's replay
    r.air()  # chunk 1: P2 on air
    with r.rp.editing("insert"):
        x = add_level_clip(r.spool, 4, 0.5, "insert")
    assert r.rp.last["from_frame"] == 2 * CF
    r.render(5)
    aired = r.flush()
    assert r.order() == [a, p2, p1, a, x]
    assert [(m.segment_id, m.frame) for c in aired for m in c.marks if m.kind == "interrupted"] == [(a, CF)]
    r.spool.close()


def test_cancel_of_a_play_now_clip_given_back_leaves_the_play_now_behind_it_its_cut(tmp_path):
    """P2 (the later play_now) cut A; P1 waits behind it. Cancelling P2 before it airs gives its chunk back: P1 is
    still a play_now whose cut has not happened, so it cuts A at the same frame (A replays after it)."""
    r = Room(tmp_path)
    a, p1, p2 = _two_play_nows(r, 4.0, 2.0)
    r.render(1)  # chunk 1 cuts A and takes P2
    with r.rp.editing("cancel", p2):
        assert r.spool.cancel(p2) == "pending"
    r.render(6)
    aired = r.flush()
    assert r.order() == [a, p1, a]
    assert [(m.segment_id, m.frame, m.requeued) for c in aired for m in c.marks if m.kind == "interrupted"] == [
        (a, CF, True)]
    r.spool.close()


def test_a_clip_cancelled_before_the_replan_point_is_dropped_when_a_later_replan_reaches_it(tmp_path):
    """X starts in chunk 2, out of reach while a render is in flight: its cancel silences it there. Once that render
    is done, a play_now reaches back into chunk 1 and gives chunk 2 back: X is not taken again (it never airs, its
    row goes, and no cut is left pending for it)."""
    r = Room(tmp_path)
    w = add_level_clip(r.spool, 1, 2.5)  # frames 0-62
    x = add_level_clip(r.spool, 2, 0.5)  # frames 62-75, in chunk 2
    r.render(4)
    r.air()  # chunk 0 on air
    r.air_at, r.rate = 5, 1.0
    stale = r.rp.next_chunk()  # chunk 4 renders: frame 63 is the first in reach
    with r.rp.editing("cancel", x):
        assert r.spool.cancel(x) == "playing"
    assert r.rp.last["from_frame"] == 3 * CF
    assert not r.rp.put(RenderedChunk(stale, np.zeros((CF, 2, 2, 3), np.uint8), "t", 0.0), r.stop)
    with r.rp.editing("play_now"):  # nothing in flight now: frame 36, in chunk 1
        p = add_level_clip(r.spool, 3, 0.5, "play_now")
    assert r.rp.last["from_frame"] == 36
    r.render(6)
    aired = r.flush()
    assert r.order() == [w, p, w]
    assert not (_levels(aired) == 2).any()
    assert r.spool.get(x) is None and not r.spool.interrupt_pending()
    r.spool.close()


def test_an_enqueue_keeps_the_buffered_chunks_of_the_programme_clip_on_air(tmp_path):
    """The programme clip on air plays on to its end whatever is enqueued (the queue clip takes over at its end), so
    an enqueue re-plans from the first chunk that holds anything besides it, as insert does: its buffered frames
    (and, with a renderer slower than real time, the head start they are) stay."""
    spool, tl = _programme_timeline(tmp_path, "#EXTM3U\np1.wav\n", 5.0)  # p1: frames 0-125, then again (the loop)
    la = Lookahead(64)
    rp = Replanner(tl, la, poll_s=0.001, air_frame=lambda: None, rate=lambda: None, within_chunk=False)
    stop = threading.Event()
    for _ in range(6):
        c = rp.next_chunk()
        assert rp.put(RenderedChunk(c, np.zeros((c.n_frames, 2, 2, 3), np.uint8), "t", 0.0), stop)
    aired = [la.get_nowait().chunk]  # chunk 0: p1 on air
    with rp.editing("enqueue"):
        q = add_level_clip(spool, 3, 0.5)
    assert rp.last["from_frame"] == 4 * CF, "chunks 1-3 hold only the programme clip on air: they stay"
    for _ in range(3):
        c = rp.next_chunk()
        assert rp.put(RenderedChunk(c, np.zeros((c.n_frames, 2, 2, 3), np.uint8), "t", 0.0), stop)
    while len(la):
        aired.append(la.get_nowait().chunk)
    starts = [(m.segment_id, m.frame) for c in aired for m in c.marks if m.kind == "started"]
    assert starts[:3] == [("programme:p1:1", 0), (q, 125), ("programme:p1:3", 137)]
    assert [c.start_frame for c in aired[1:]] == [c.end_frame for c in aired[:-1]]
    spool.close()


def test_a_play_now_clip_whose_cut_happened_does_not_cut_the_one_before_it_while_a_cancel_is_unsettled(tmp_path):
    """X is cancelled on air: it stays 'playing' (a cut is pending for it) until its cut airs. Meanwhile play_now P1,
    then play_now P2: P2 cuts the air and P1 waits behind it, its cut done. The chunks cut while X's cut has not
    aired yet must not take P1 for a play_now still waiting: P2 plays to its end, once."""
    r = Room(tmp_path)
    x = add_level_clip(r.spool, 1, 4.0)
    r.render(3)
    r.air()  # chunk 0: X on air
    with r.rp.editing("cancel", x):
        assert r.spool.cancel(x) == "playing"
    with r.rp.editing("play_now"):
        p1 = add_level_clip(r.spool, 2, 0.5, "play_now")
    with r.rp.editing("play_now"):
        p2 = add_level_clip(r.spool, 3, 1.5, "play_now")
    r.render(4)  # X's cut has not aired yet: it is still cancel-requested in the spool
    assert r.spool.interrupt_pending()
    aired = r.flush()
    assert r.order() == [x, p2, p1]
    assert [(m.segment_id, m.frame) for c in aired for m in c.marks if m.kind == "interrupted"] == [(x, CF)]
    r.spool.close()
