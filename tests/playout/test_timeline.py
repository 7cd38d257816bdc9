"""Timeline: exact audio-clock accounting, marks on the right frames, play_now cuts, programme hand-over, idle."""

from __future__ import annotations

import random

import numpy as np
import pytest

from flashtalk_live.settings import EncoderSettings, Settings, VideoSettings
from flashtalk_live.playout.timeline import Timeline

from support.queue_fakes import FakeQueue, labelled_wav
from support.settings import load_programme, section_settings


def _programme_timeline(path) -> tuple[Settings, FakeQueue, Timeline]:
    """The default room's timeline over a FakeQueue, with the programme at `path` (loaded as the daemon does)."""
    st = section_settings(video={})
    q = FakeQueue()
    return st, q, Timeline(st.video, st.encoder, q, load_programme(path, st))


def _run(tl: Timeline, n: int):
    chunks = [tl.next_chunk() for _ in range(n)]
    audio = np.concatenate([c.audio for c in chunks])
    model = np.concatenate([c.model_audio for c in chunks])
    marks = [m for c in chunks for m in c.marks]
    segs = [s for c in chunks for s in c.frame_segments]
    return chunks, audio, model, marks, segs


def _kinds(marks, kind):
    return [(m.frame, m.segment_id, m.source) for m in marks if m.kind == kind]


@pytest.mark.parametrize("fps,chunk_frames", [(25, 28), (30, 7), (24, 5)])
def test_exact_accounting_many_random_clips(fps, chunk_frames):
    """Clip lengths from 1 sample to several chunks; every sample lands where the clock says, marks too."""
    st = section_settings(video=dict(fps=fps, chunk_frames=chunk_frames))
    rate, spf = st.encoder.audio_rate, st.samples_per_frame
    rng = random.Random(fps)
    q = FakeQueue(rate)
    lengths = [1, 2, spf - 1, spf, spf + 1] + [rng.randint(1, 5 * chunk_frames * spf) for _ in range(40)]
    entries = [q.add(f"c{i}", n) for i, n in enumerate(lengths)]
    tl = Timeline(st.video, st.encoder, q, None)
    total = sum(lengths)
    n_chunks = total // (chunk_frames * spf) + 3
    chunks, audio, model, marks, segs = _run(tl, n_chunks)

    # Exact sizes: every chunk has chunk_frames * spf samples, model audio tiles the 16 kHz grid exactly.
    assert all(c.audio.shape == (chunk_frames * spf, 2) and c.audio.dtype == np.float32 for c in chunks)
    assert [c.start_frame for c in chunks] == [i * chunk_frames for i in range(n_chunks)]
    assert audio.shape[0] == n_chunks * chunk_frames * spf
    assert model.shape[0] == n_chunks * chunk_frames * spf * 16000 // rate

    # Audio: clips back to back from sample 0, then silence.
    starts = np.cumsum([0] + lengths[:-1])
    expect = np.zeros_like(audio)
    expect_model = np.zeros_like(model)
    seg_of_sample = np.full(audio.shape[0], -1)
    for e, g in zip(entries, starts):
        expect[g : g + e.n, 0] = np.arange(e.n)
        expect[g : g + e.n, 1] = e.number
        seg_of_sample[g : g + e.n] = e.number - 1
        lo, hi = g * 16000 // rate, (g + e.n) * 16000 // rate
        k = min(hi - lo, e.n * 16000 // rate)  # the clip's own model audio, zero-padded to the grid
        expect_model[lo : lo + k] = 1000 + e.number
    assert np.array_equal(audio, expect)
    assert np.array_equal(model, expect_model)

    # Marks: started on the frame of the first sample, finished on the frame of the last; in airing order.
    assert _kinds(marks, "started") == [(g // spf, e.segment_id, "queue") for e, g in zip(entries, starts)]
    assert _kinds(marks, "finished") == [((g + e.n - 1) // spf, e.segment_id, "queue") for e, g in zip(entries, starts)]
    assert not _kinds(marks, "interrupted")
    for c in chunks:
        assert all(c.start_frame <= m.frame < c.end_frame for m in c.marks)

    # frame_segments: the clip holding most of each frame's samples (ties go to the later clip).
    for f, seg in enumerate(segs):
        ids = seg_of_sample[f * spf : (f + 1) * spf]
        ids = ids[ids >= 0]
        if ids.size == 0:
            assert seg is None
        else:
            counts = np.bincount(ids)
            best = max(range(len(counts)), key=lambda i: (counts[i], i))
            assert seg == f"c{best}"
    # idle: true exactly for chunks with no clip samples at all.
    n = chunk_frames * spf
    assert [c.idle for c in chunks] == [bool(np.all(seg_of_sample[i * n : (i + 1) * n] < 0)) for i in range(n_chunks)]
    assert chunks[-1].idle and q.taken == [e.segment_id for e in entries]


def test_several_short_clips_in_one_chunk_and_history():
    st = section_settings(video={})
    q = FakeQueue()
    spf = st.samples_per_frame  # 1920
    q.add("a", 1000)  # frame 0
    q.add("b", 3000)  # samples 1000..3999: frames 0..2
    q.add("c", 1)  # sample 4000: frame 2
    tl = Timeline(st.video, st.encoder, q, None, history_seconds=8)
    c = tl.next_chunk()
    assert [(m.kind, m.segment_id, m.frame) for m in c.marks] == [
        ("started", "a", 0), ("finished", "a", 0), ("started", "b", 0), ("finished", "b", 2),
        ("started", "c", 2), ("finished", "c", 2),
    ]
    # Frame 0: a has 1000 samples, b 920 -> a. Frame 1: all b. Frame 2: b 160 + c 1 -> b. Then silence.
    assert c.frame_segments[:4] == ["a", "b", "b", None]
    assert c.audio[4001:].max() == 0 and not c.idle
    assert 4001 < spf * 3
    # The rolling window: 8 s at 16 kHz, zero-padded before the broadcast began, ending with this chunk's audio.
    assert c.model_history.shape == (128000,)
    assert np.array_equal(c.model_history[-c.model_audio.shape[0] :], c.model_audio)
    assert not c.model_history[: -c.model_audio.shape[0]].any()
    chunks = [tl.next_chunk() for _ in range(8)]
    joined = np.concatenate([c.model_audio] + [x.model_audio for x in chunks])
    assert np.array_equal(chunks[-1].model_history, joined[-128000:])
    assert np.array_equal(tl.model_history(1.0), joined[-16000:])
    assert tl.model_history(10).shape == (160000,)


def test_idle_silence_without_queue_or_programme():
    st = section_settings(video={})
    tl = Timeline(st.video, st.encoder, FakeQueue(), None)
    for _ in range(3):
        c = tl.next_chunk()
        assert c.idle and not c.marks and c.frame_segments == [None] * 28
        assert not c.audio.any() and c.audio.shape == (28 * 1920, 2) and c.model_audio.shape == (28 * 640,)
    assert tl.state == "idle"
    assert Timeline(st.video, st.encoder, None, None).next_chunk().idle  # no queue at all is allowed too


def test_play_now_cuts_the_queue_clip_at_the_chunk_boundary():
    st = section_settings(video={})
    q = FakeQueue()
    long = q.add("long", 48000 * 5)
    tl = Timeline(st.video, st.encoder, q, None)
    tl.next_chunk()
    tl.next_chunk()
    urgent = q.add("urgent", 48000, play_now=True)
    c = tl.next_chunk()
    assert [(m.kind, m.segment_id, m.frame) for m in c.marks[:2]] == [("interrupted", "long", 56), ("started", "urgent", 56)]
    assert q.interrupted == [] and q.requeued == ["long"] and c.marks[0].requeued
    assert c.audio[0, 1] == urgent.number and c.audio[0, 0] == 0  # the new clip's very first sample
    assert c.frame_segments[0] == "urgent"
    # The cut clip replays from its start right after the play_now clip (the spool's requeue contract).
    assert [(m.kind, m.segment_id) for m in c.marks[2:]] == [("finished", "urgent"), ("started", "long")]
    _, _, _, marks, _ = _run(tl, 10)
    assert [(m.kind, m.segment_id) for m in marks] == [("finished", "long")]
    assert not q.pending


def test_play_now_while_idle_starts_on_the_next_chunk_without_cut_mark():
    q = FakeQueue()
    tl = Timeline(VideoSettings(), EncoderSettings(), q, None)
    tl.next_chunk()
    q.add("now", 100, play_now=True)
    c = tl.next_chunk()
    assert [(m.kind, m.frame) for m in c.marks] == [("started", 28), ("finished", 28)]
    assert q.interrupted == []


def test_unplayable_queue_clip_is_reported_and_skipped():
    q = FakeQueue()
    q.add("bad", 1000, broken=True)
    good = q.add("good", 1000)
    tl = Timeline(VideoSettings(), EncoderSettings(), q, None)
    c = tl.next_chunk()
    assert [(m.kind, m.segment_id, m.frame) for m in c.marks] == [
        ("interrupted", "bad", 0), ("started", "good", 0), ("finished", "good", 0)
    ]
    assert q.interrupted == ["bad"] and c.audio[0, 1] == good.number


def test_mono_output_and_mono_clip_upmix():
    st = Settings(state_dir="/x", encoder={"audio_channels": 1})
    q = FakeQueue(channels=1)
    q.add("m", 5000)
    c = Timeline(st.video, st.encoder, q, None).next_chunk()
    assert c.audio.shape == (28 * 1920, 1) and c.audio[4999, 0] == 4999
    q2 = FakeQueue(channels=1)
    q2.add("m", 5000)
    c2 = Timeline(VideoSettings(), EncoderSettings(), q2, None).next_chunk()  # stereo output from a mono clip
    assert c2.audio.shape[1] == 2 and np.array_equal(c2.audio[:5000, 0], c2.audio[:5000, 1])


# -- with the real programme ------------------------------------------------------------------------


@pytest.fixture
def playlist(tmp_path):
    """p1 (1.0 s, level 1), p2 (0.5 s, level 2), p3 (0.7 s, level 3), in order, no pauses."""
    lens = {name: labelled_wav(tmp_path / f"{name}.wav", lvl, sec) for name, lvl, sec in
            [("p1", 1, 1.0), ("p2", 2, 0.5), ("p3", 3, 0.7)]}
    (tmp_path / "list.m3u").write_text("#EXTM3U\np1.wav\np2.wav\np3.wav\n")
    return tmp_path / "list.m3u", lens


def _segments_in_order(marks):
    return [m.segment_id for m in marks if m.kind == "started"]


def test_programme_plays_and_loops_then_queue_takes_over_at_the_clip_boundary(playlist):
    path, lens = playlist
    st, q, tl = _programme_timeline(path)
    chunks, audio, _, marks, _ = _run(tl, 1)  # 1.12 s: p1 (1.0 s) and the start of p2
    assert _segments_in_order(marks) == ["programme:p1:1", "programme:p2:2"]
    assert all(m.source == "programme" for m in marks)
    assert np.all(audio[: lens["p1"]] == 1 / 64) and np.all(audio[lens["p1"] : lens["p1"] + 100] == 2 / 64)
    q.add("q1", 48000 // 2)
    chunks, audio2, _, marks2, _ = _run(tl, 3)
    # p2 was playing when q1 arrived: p2 finishes, then q1, then the programme resumes with p3 (not p1 again).
    assert _segments_in_order(marks2) == ["q1", "programme:p3:3", "programme:p1:4", "programme:p2:5", "programme:p3:6"]
    end_p2 = lens["p1"] + lens["p2"]  # global sample where p2 ended
    q1_start = [m for m in marks2 if m.segment_id == "q1" and m.kind == "started"][0]
    assert q1_start.frame == end_p2 // 1920
    whole = np.concatenate([audio, audio2])
    assert np.all(whole[lens["p1"] : end_p2] == 2 / 64)
    assert np.array_equal(whole[end_p2 : end_p2 + 24000, 0], np.arange(24000))  # q1's labelled samples
    assert np.all(whole[end_p2 + 24000 : end_p2 + 24000 + lens["p3"]] == 3 / 64)


def test_play_now_cuts_a_programme_clip_which_replays_from_its_start(tmp_path):
    n_long = labelled_wav(tmp_path / "long.wav", 5, 3.0)
    labelled_wav(tmp_path / "next.wav", 6, 0.2)
    (tmp_path / "l.toml").write_text('[[clip]]\npath="long.wav"\n[[clip]]\npath="next.wav"\n')
    st, q, tl = _programme_timeline(tmp_path / "l.toml")
    tl.next_chunk()
    q.add("urgent", 1000, play_now=True)
    c = tl.next_chunk()
    assert [(m.kind, m.segment_id, m.source, m.frame) for m in c.marks[:3]] == [
        ("interrupted", "programme:long:1", "programme", 28),
        ("started", "urgent", "queue", 28),
        ("finished", "urgent", "queue", 28),
    ]
    assert q.interrupted == []  # programme clips are not the spool's business
    # After the urgent clip the cut programme clip starts again from its first sample.
    assert c.marks[3].kind == "started" and c.marks[3].segment_id == "programme:long:2"
    assert np.all(c.audio[1000 : 1000 + 2000] == 5 / 64)
    _, audio, _, marks, _ = _run(tl, 3)
    fin = [m for m in marks if m.kind == "finished"]
    assert fin and fin[0].segment_id == "programme:long:2"
    assert fin[0].frame == (28 * 1920 + 1000 + n_long - 1) // 1920  # played in full, after the urgent clip


def test_programme_pause_is_exact_silence_and_yields_to_the_queue(tmp_path):
    n1 = labelled_wav(tmp_path / "a.wav", 1, 0.3)
    labelled_wav(tmp_path / "b.wav", 2, 0.3)
    (tmp_path / "p.m3u").write_text("#EXTM3U\na.wav\n#EXT-X-PAUSE:0.5\nb.wav\n")
    st, q, tl = _programme_timeline(tmp_path / "p.m3u")
    c = tl.next_chunk()
    pause = 24000
    assert np.all(c.audio[:n1] == 1 / 64) and not c.audio[n1 : n1 + pause].any()
    assert np.all(c.audio[n1 + pause : n1 + pause + 100] == 2 / 64)
    # A second pause (b's default, none here) - now a long pause: queue clip arriving during it takes over.
    (tmp_path / "p2.m3u").write_text("#EXTM3U\na.wav\n#EXT-X-PAUSE:10\n")
    tl2 = Timeline(st.video, st.encoder, q, load_programme(tmp_path / "p2.m3u", st))
    c1 = tl2.next_chunk()
    assert tl2.state == "pause" and not c1.audio[n1:].any()
    q.add("q", 500)
    c2 = tl2.next_chunk()
    assert c2.marks[0].kind == "started" and c2.marks[0].segment_id == "q" and c2.marks[0].frame == 28
    assert c2.marks[2].segment_id == "programme:a:2"  # the pause was dropped, the programme continues


def _resume_timeline(path, hold_s: float) -> tuple[FakeQueue, Timeline]:
    st = section_settings(video={})
    q = FakeQueue()
    return q, Timeline(st.video, st.encoder, q, load_programme(path, st), replannable=True,
                       programme_resume_s=hold_s)


def test_the_programme_resumes_only_after_the_hold_and_a_reply_within_it_starts_at_once(playlist):
    path, _ = playlist
    programme_starts = []
    for hold in (0.0, 2.0):
        q, tl = _resume_timeline(path, hold)
        q.add("q1", 24000)  # 0.5 s: frames 0-12
        _, _, _, marks, _ = _run(tl, 4)
        programme_starts.append(next(m.frame for m in marks if m.kind == "started" and m.source == "programme"))
    # at once: at q1's end (sample 24000, frame 12); held: the first chunk boundary 2 s after it (sample 120000
    # lies in chunk 2, so chunk 3: frame 84)
    assert programme_starts == [12, 84]

    reply_starts = []
    for hold in (0.0, 2.0):
        q, tl = _resume_timeline(path, hold)
        q.add("q1", 24000)
        tl.next_chunk()
        q.add("q2", 1000)  # the next reply, pushed after q1 ended
        _, _, _, marks, _ = _run(tl, 2)
        reply_starts.append(next(m.frame for m in marks if m.kind == "started" and m.segment_id == "q2"))
    # at once: behind p1 (1.0 s from sample 24000, to frame 37); held: the next chunk, nothing in between
    assert reply_starts == [37, 28]


def test_a_re_plan_undoes_the_hold_of_a_queue_clip_it_takes_back(playlist):
    path, _ = playlist
    q, tl = _resume_timeline(path, 2.0)
    q.add("q1", 24000)
    tl.next_chunk()
    tl.next_chunk()
    assert tl.rewind(0) == [("take", "q1")]
    q.pending.clear()  # the edit cancelled q1: it never aired, so nothing holds the programme back
    c = tl.next_chunk()
    assert (c.marks[0].kind, c.marks[0].segment_id, c.marks[0].frame) == ("started", "programme:p1:1", 0)


# -- with the real spool -------------------------------------------------------------------------------


def _pcm(level: int, seconds: float) -> bytes:
    """Raw s16le stereo 48 kHz at level/64: decodes exactly."""
    n = int(round(seconds * 48000))
    return np.full((n, 2), level * 512, "<i2").tobytes()


def _spool_add(spool, level, seconds, mode="enqueue"):
    return spool.add(_pcm(level, seconds), mode=mode, duration_s=seconds, format="pcm_s16le",
                     sample_rate=48000, channels=2).segment_id


def test_real_spool_back_to_back_play_now_and_cancel(tmp_path):
    from flashtalk_live.queue.spool import Spool

    st = section_settings(video={})
    with Spool(tmp_path / "spool") as spool:
        a = _spool_add(spool, 1, 2.0)
        b = _spool_add(spool, 2, 0.5)
        tl = Timeline(st.video, st.encoder, spool, None)
        c0 = tl.next_chunk()
        assert _segments_in_order(c0.marks) == [a] and np.all(c0.audio == 1 / 64)
        # play_now: the playing clip a is cut at the next chunk boundary and requeued right after the play_now
        # clip: it replays from its start, before b.
        now = _spool_add(spool, 3, 0.2, mode="play_now")
        assert spool.interrupt_pending()
        c1 = tl.next_chunk()
        assert [(m.kind, m.segment_id, m.frame, m.requeued) for m in c1.marks[:3]] == [
            ("interrupted", a, 28, True), ("started", now, 28, False), ("finished", now, 28 + 9600 // 1920 - 1, False)
        ]
        assert spool.get(a).state == "playing" and not spool.interrupt_pending()  # taken again, after `now`
        assert np.all(c1.audio[:9600] == 3 / 64) and np.all(c1.audio[9600:] == 1 / 64)  # then a from its start
        assert _segments_in_order(c1.marks) == [now, a]
        while tl.current_segment == a:
            tl.next_chunk()
        assert tl.current_segment == b
        for sid in (a, now):
            spool.mark_finished(sid)
        # A long clip cancelled while it plays is cut at the next boundary, and nothing else jumps in.
        d = _spool_add(spool, 4, 5.0)
        e = _spool_add(spool, 5, 1.0)
        tl.next_chunk()
        assert tl.current_segment == d
        assert spool.cancel(d) == "playing" and spool.interrupt_pending()
        c3 = tl.next_chunk()
        assert [(m.kind, m.segment_id) for m in c3.marks[:2]] == [("interrupted", d), ("started", e)]
        # d stays 'playing' (cancelled) until its cut airs: the daemon settles it then.
        assert spool.get(d).state == "playing" and np.all(c3.audio[:100] == 5 / 64)
        # Cancelling a clip that the timeline has already cut completely (it sits in the look-ahead, 'playing' in
        # the spool until it airs) must not cut what plays now or let the next clip jump the queue.
        while tl.current_segment is not None:
            tl.next_chunk()
        f = _spool_add(spool, 6, 0.1)
        g = _spool_add(spool, 7, 3.0)
        h = _spool_add(spool, 8, 0.1)
        tl.next_chunk()
        assert tl.current_segment == g
        assert spool.cancel(f) == "playing" and spool.interrupt_pending()
        c5 = tl.next_chunk()
        assert not [m for m in c5.marks if m.kind == "interrupted"] and np.all(c5.audio[:1000] == 7 / 64)
        assert tl.current_segment == g and spool.get(h).state == "pending"


def test_a_programme_clip_waits_for_the_render_ahead_gate_whole_and_decoded_once(tmp_path):
    """Programme clips pass the admission gate like queue clips: idle until it opens, then the clip from its start."""
    n1 = labelled_wav(tmp_path / "a.wav", 1, 1.5)
    (tmp_path / "p.m3u").write_text("#EXTM3U\na.wav\n")
    st = section_settings(video={})

    class Gate:
        def __init__(self) -> None:
            self.asked: list[tuple[str, float, int]] = []

        def may_start(self, segment_id: str, clip_s: float, frame: int) -> bool:
            self.asked.append((segment_id, round(clip_s, 3), frame))
            return len(self.asked) > 2  # refused at chunks 0 and 1

    gate = Gate()
    tl = Timeline(st.video, st.encoder, FakeQueue(), load_programme(tmp_path / "p.m3u", st), admission=gate)
    _, audio, _, marks, _ = _run(tl, 5)
    assert [a[2] for a in gate.asked][:3] == [0, 28, 56] and {a[:2] for a in gate.asked} == {("programme:a", 1.5)}
    assert not audio[: 2 * 28 * 1920].any(), "idle while the gate is shut"
    start = 2 * 28 * 1920
    assert np.all(audio[start: start + n1] == 1 / 64)
    assert [(m.kind, m.segment_id, m.frame) for m in marks][:2] == [
        ("started", "programme:a:1", 56), ("finished", "programme:a:1", (start + n1 - 1) // 1920)]  # decoded once


# -- a re-plan gives the programme back where it stood ----------------------------------------------


def _names(marks) -> list[str]:
    """Clips in the order they start, programme items by playlist name (their play counter left out)."""
    return [m.segment_id.split(":")[1] if m.source == "programme" else m.segment_id
            for m in marks if m.kind == "started"]


def test_a_re_plan_that_gives_back_two_programme_clips_resumes_the_programme_where_it_left_off(playlist):
    """Chunk 1 picked p3 and p1 (the loop); a re-plan (an enqueue) gives both back: after the queue clip the
    programme goes on with p3, then p1, then p2; p1 is not skipped."""
    path, _ = playlist
    q, tl = _resume_timeline(path, 0.0)
    _, _, _, marks, _ = _run(tl, 2)
    assert _names(marks) == ["p1", "p2", "p3", "p1"]
    undone = tl.rewind(28)
    assert [op for op, _ in undone] == ["programme", "programme"]
    q.add("q1", 24000)  # the enqueue: p2 (on air) plays on to its end, then q1
    _, _, _, marks, _ = _run(tl, 3)
    assert _names(marks)[:4] == ["q1", "p3", "p1", "p2"]


def test_a_re_plan_from_a_programme_pause_gives_back_the_clips_after_it(tmp_path):
    """The first item a re-plan gives back is the pause after the clip on air: the clips picked after it are given
    back too (not skipped)."""
    for name, sec in (("a", 1.2), ("b", 0.3), ("c", 0.3), ("d", 2.0)):
        labelled_wav(tmp_path / f"{name}.wav", 1, sec)
    (tmp_path / "p.m3u").write_text("#EXTM3U\na.wav\n#EXT-X-PAUSE:0.3\nb.wav\nc.wav\nd.wav\n")
    q, tl = _resume_timeline(tmp_path / "p.m3u", 0.0)
    _, _, _, marks, _ = _run(tl, 2)  # chunk 1: a's end (1.2 s), its pause, b, c, the start of d (2.1 s)
    assert _names(marks) == ["a", "b", "c", "d"]
    undone = tl.rewind(28)
    assert undone[0][1].kind == "pause"
    q.add("q1", 24000)
    _, _, _, marks, _ = _run(tl, 3)
    assert _names(marks)[:4] == ["q1", "b", "c", "d"]


def test_a_re_plan_that_undoes_a_play_now_cut_of_a_programme_clip_does_not_air_it_twice(tmp_path):
    """play_now cut the programme clip on air in a chunk cut ahead (the clip is to replay after it); a re-plan gives
    that chunk back (the play_now clip is cancelled before it aired): the clip plays on to its end, once, and the
    programme goes on with its next item."""
    labelled_wav(tmp_path / "long.wav", 5, 3.0)
    labelled_wav(tmp_path / "next.wav", 6, 0.2)
    (tmp_path / "l.toml").write_text('[[clip]]\npath="long.wav"\n[[clip]]\npath="next.wav"\n')
    q, tl = _resume_timeline(tmp_path / "l.toml", 0.0)
    tl.next_chunk()  # long on air
    q.add("urgent", 1000, play_now=True)
    c = tl.next_chunk()  # cuts long (to replay after urgent), takes urgent
    assert [(m.kind, m.segment_id) for m in c.marks[:2]] == [("interrupted", "programme:long:1"), ("started", "urgent")]
    undone = tl.rewind(28)
    assert undone[0] == ("take", "urgent")
    q.pending.clear()  # the edit cancelled urgent: it never aired
    _, _, _, marks, _ = _run(tl, 4)
    assert [(m.kind, m.segment_id, m.frame) for m in marks if m.segment_id == "programme:long:1"] == [
        ("finished", "programme:long:1", 74)]
    assert _names(marks)[:2] == ["next", "long"], "long played to its end once; the programme goes on with next"


def test_a_play_now_waiting_for_its_head_start_counts_each_chunk_it_waits_once():
    """While a play_now clip waits for its head start, each chunk cut meanwhile is one chunk spent waiting
    (`waiting_chunks_total`), not two: the play_now's cut asks the gate, and idle follows without asking again."""
    from flashtalk_live.playout.admission import Admission

    st = section_settings(video={})
    adm = Admission(chunk_s=28 / 25, fps=25, base_chunks=3, capacity_s=60.0, margin=0.0, buffered_s=lambda: 0.0)
    q = FakeQueue()
    tl = Timeline(st.video, st.encoder, q, None, admission=adm)
    q.add("a", 48000 * 5)
    tl.next_chunk()  # admitted: no render rate measured yet
    adm.rate.observe(2 * 28 / 25, 28 / 25)  # the renderer renders at half real time: nothing buffered, p waits
    q.add("p", 48000, play_now=True)
    c = tl.next_chunk()
    assert [(m.kind, m.segment_id) for m in c.marks] == [("interrupted", "a")] and c.idle
    assert adm.refusals == 1
    tl.next_chunk()
    tl.next_chunk()
    assert adm.refusals == 3


def test_the_look_ahead_goes_back_to_its_base_once_the_clip_waiting_for_its_head_start_is_gone():
    """A queue clip waiting for its head start grows the look-ahead's bound; once it left the queue (cancelled,
    cleared) and nothing else waits, the bound is the base again and status shows no clip waiting."""
    from flashtalk_live.playout.admission import Admission

    st = section_settings(video={})
    adm = Admission(chunk_s=28 / 25, fps=25, base_chunks=3, capacity_s=60.0, margin=0.0, buffered_s=lambda: 0.0)
    adm.rate.observe(2 * 28 / 25, 28 / 25)  # half real time
    q = FakeQueue()
    tl = Timeline(st.video, st.encoder, q, None, admission=adm)
    q.add("a", 48000 * 5)
    assert tl.next_chunk().idle
    assert adm.target_chunks() == 8 and adm.status()["waiting"] == "a"
    q.pending.clear()  # a is cancelled before it started
    tl.next_chunk()
    assert adm.target_chunks() == 3
    assert adm.status()["waiting"] is None and adm.status()["waiting_reason"] is None
