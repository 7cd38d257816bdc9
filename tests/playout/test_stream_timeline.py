"""A streamed clip in the timeline (queue/streams.py + playout/timeline.py) with a real spool and registry: it
starts once its first chunk and the jitter allowance are there, is cut as its audio grows, pauses inside the clip
when the producer is late (counted as starved, given back by a re-plan), resumes where its audio left off, and a
stream cut by its idle timeout ends 'interrupted' with that reason. Audio levels label the pieces."""

from __future__ import annotations

import numpy as np

from flashtalk_live.playout.pacing import Lookahead
from flashtalk_live.queue.spool import Spool
from flashtalk_live.queue.streams import StreamRegistry
from flashtalk_live.settings import Settings
from flashtalk_live.playout.replan import Replanner
from flashtalk_live.playout.timeline import Timeline

from support.level_clips import level_samples as pcm, ManualClock as Clock

CF, SPF = 28, 1920  # 1.12 s chunks of 48 kHz audio at 25 fps
CHUNK = CF * SPF


def room(tmp_path, prebuffer_s: float = 0.4):
    st = Settings(state_dir="/nonexistent-state", streams={"prebuffer_s": prebuffer_s, "idle_timeout_s": 5.0})
    spool = Spool(tmp_path / "spool")
    clock = Clock()
    reg = StreamRegistry(st.streams, st.ingest, st.encoder, spool, chunk_s=CF / 25, clock=clock)
    tl = Timeline(st.video, st.encoder, spool, None, streams=reg, replannable=True)
    return spool, reg, tl, clock


def open_stream(reg: StreamRegistry) -> str:
    return reg.open({}, "enqueue", None, format="pcm_s16le", sample_rate=48000, channels=2, declared_s=None,
                    peer="test").entry.segment_id


def levels(chunk) -> np.ndarray:
    return np.round(chunk.audio[:, 0] * 32768 / 512).astype(int)


def test_starts_after_its_head_then_pauses_inside_the_clip_and_goes_on_where_it_stopped(tmp_path):
    spool, reg, tl, clock = room(tmp_path)
    sid = open_stream(reg)
    reg.append(sid, 0, pcm(1, CHUNK))  # one chunk: short of chunk + prebuffer
    c0 = tl.next_chunk()
    assert c0.idle and not c0.marks
    reg.append(sid, 1, pcm(2, int(0.5 * 48000)))
    c1 = tl.next_chunk()  # now it starts: the whole first chunk is its audio
    assert [m.kind for m in c1.marks] == ["started"] and set(c1.frame_segments) == {sid}
    assert (levels(c1) == 1).all()
    c2 = tl.next_chunk()  # 0.5 s arrived, then the producer is late: the rest of the chunk is a pause in the clip
    lv = levels(c2)
    assert (lv[:24000] == 2).all() and (lv[24000:] == 0).all()
    assert set(c2.frame_segments) == {sid} and not c2.idle and not c2.marks
    assert tl.starved_samples == CHUNK - 24000
    # model audio too (the 16 kHz resampler holds back a few ms until more audio comes)
    assert c2.model_audio[:7800].min() > 0 and c2.model_audio[8000 + 10:].max() == 0
    reg.append(sid, 2, pcm(3, SPF * 10))
    reg.close(sid)
    c3 = tl.next_chunk()  # the audio goes on where it stopped, then the clip finishes
    lv = levels(c3)
    assert (lv[: SPF * 10] == 3).all() and (lv[SPF * 10:] == 0).all()
    assert [m.kind for m in c3.marks] == ["finished"] and c3.marks[0].frame == c3.start_frame + 9
    # its model audio continued from its own position, not from where the pause put the broadcast clock
    assert abs(c3.model_audio[:3000].mean() - 3 * 512 / 32768) < 1e-3
    assert spool.get(sid).duration_s == CHUNK / 48000 + 0.5 + SPF * 10 / 48000


def test_a_replan_gives_back_the_starved_samples_it_undoes(tmp_path):
    spool, reg, tl, clock = room(tmp_path, prebuffer_s=0.0)
    rp = Replanner(tl, Lookahead(8), poll_s=0.001)
    sid = open_stream(reg)
    reg.append(sid, 0, pcm(1, CHUNK))
    rp.next_chunk()
    rp.next_chunk()  # all pause
    assert tl.starved_samples == CHUNK
    tl.rewind(CF)
    assert tl.starved_samples == 0


def test_the_idle_timeout_cuts_it_and_it_ends_interrupted_with_the_reason(tmp_path):
    spool, reg, tl, clock = room(tmp_path, prebuffer_s=0.0)
    cuts: list = []
    reg.on_cut = lambda s, had: cuts.append((s, had))
    sid = open_stream(reg)
    reg.append(sid, 0, pcm(1, CHUNK + 100))
    empty = open_stream(reg)
    tl.next_chunk()
    clock.t = 6.0
    assert sorted(reg.sweep()) == sorted([sid, empty])
    assert sorted(cuts) == sorted([(sid, True), (empty, False)])
    assert spool.get(empty) is None  # nothing to air: it left the queue
    c = tl.next_chunk()
    assert [(m.kind, m.reason) for m in c.marks] == [("interrupted", "stream_timeout")]
    assert c.marks[0].frame == c.start_frame  # its last 100 samples, then the end
    assert spool.stream_rows()[0]["state"] == "cut"


def test_a_restart_rebuilds_each_stream_from_its_parts_and_an_open_one_resumes(tmp_path):
    spool, reg, tl, clock = room(tmp_path)
    a = open_stream(reg)
    for i in range(3):
        reg.append(a, i, pcm(i + 1, 1001))  # odd sizes: pieces end mid-frame in bytes too
    spool.close()
    spool = Spool(tmp_path / "spool")
    st = Settings(state_dir="/nonexistent-state")
    reg2 = StreamRegistry(st.streams, st.ingest, st.encoder, spool, chunk_s=CF / 25, clock=clock)
    live = reg2.live(a)
    assert live is not None and live.available == 3003 and not live.ended
    assert reg2.append(a, 2, pcm(3, 1001))["duplicate"]
    assert reg2.append(a, 3, pcm(4, 1001))["next_seq"] == 4
    assert reg2.close(a)["parts"] == 4 and live.available == 4004 and live.ended
