"""`flashtalk_producer_starved_seconds` is a Prometheus counter (metrics.py, from the daemon's
`producer_starved_seconds`): it must never go down. The timeline cuts a producer's pause into a chunk and gives it
back when a re-plan undoes that chunk (buffered, not on air), so the count is taken where the pause airs: each chunk
carries its pauses by frame (`RenderChunk.starved`) and the pacer adds them as those frames go out."""

from __future__ import annotations

import numpy as np

from flashtalk_live.chunks import RenderedChunk
from flashtalk_live.playout.pacing import Lookahead, Pacer
from flashtalk_live.playout.replan import Replanner
from flashtalk_live.playout.timeline import Timeline
from flashtalk_live.queue.spool import Spool
from flashtalk_live.queue.streams import StreamRegistry
from flashtalk_live.settings import Settings

CF, SPF = 28, 1920


class SimTime:
    def __init__(self) -> None:
        self.t = 0.0

    def clock(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += max(dt, 0.0)


def starved_stream(tmp_path):
    """A timeline whose streamed clip has one chunk of audio, then a producer that went quiet."""
    st = Settings(state_dir="/nonexistent-state", streams={"prebuffer_s": 0.0})
    spool = Spool(tmp_path / "spool")
    reg = StreamRegistry(st.streams, st.ingest, st.encoder, spool, chunk_s=CF / 25, clock=lambda: 0.0)
    tl = Timeline(st.video, st.encoder, spool, None, streams=reg, replannable=True)
    rp = Replanner(tl, Lookahead(8), poll_s=0.001)
    sid = reg.open({}, "enqueue", None, format="pcm_s16le", sample_rate=48000, channels=2, declared_s=None,
                   peer="t").entry.segment_id
    reg.append(sid, 0, np.full((CF * SPF, 2), 512, "<i2").tobytes())
    return tl, rp


def rendered(chunk) -> RenderedChunk:
    return RenderedChunk(chunk, np.zeros((chunk.n_frames, 2, 2, 3), np.uint8), "test", 0.0)


def test_each_chunk_carries_its_pauses_by_frame_and_keeps_only_its_own_when_cut_short(tmp_path):
    tl, rp = starved_stream(tmp_path)
    chunks = [rp.next_chunk() for _ in range(3)]
    paused = [sum(c.starved.values()) for c in chunks]
    assert paused[0] == 0 and paused[1] > 0  # the first chunk holds the audio, then the producer is behind
    assert sum(paused) == tl.starved_samples  # the same pauses the timeline counts
    c = chunks[1]
    assert all(c.start_frame <= f < c.end_frame and 0 < k <= SPF for f, k in c.starved.items())
    head = c.head(10)
    assert head.starved == {f: k for f, k in c.starved.items() if f < c.start_frame + 10}


def test_the_counter_counts_pauses_as_they_air_and_never_falls_when_a_replan_undoes_one(tmp_path):
    tl, rp = starved_stream(tmp_path)
    first, dropped = rp.next_chunk(), rp.next_chunk()
    assert sum(dropped.starved.values()) > 0
    cut = tl.starved_samples
    tl.rewind(dropped.start_frame)  # an edit re-plans the buffered chunk that holds the pause: it never airs
    assert tl.starved_samples < cut  # the timeline gives the undone pause back ...
    recut = rp.next_chunk()  # the producer is still behind: the re-cut future pauses again
    sim = SimTime()
    la = Lookahead(4, SPF)
    la.put(rendered(first))
    la.put(rendered(recut.head(10)))
    pacer = Pacer(la, 25, SPF, 2, clock=sim.clock, sleep=sim.sleep)
    counted = []
    for _ in range(first.n_frames + 10):
        next(pacer)
        counted.append(pacer.starved_samples)
    assert counted == sorted(counted)  # ... the counter of what aired never falls
    assert counted[first.n_frames - 1] == 0  # nothing paused in the first chunk
    aired = sum(k for f, k in recut.starved.items() if f < recut.start_frame + 10)
    assert counted[-1] == aired > 0  # exactly the pause frames that aired, the dropped chunk's not among them
