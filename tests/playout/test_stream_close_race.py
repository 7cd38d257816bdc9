"""A streamed clip's close (or idle-timeout cut) adds the decoder's tail and then ends the stream, on an ingest worker,
while the render thread cuts the clip: the timeline reads `remaining` and `complete` without the stream's lock, so a
close that runs between those two reads must not end the clip before its tail (every acknowledged piece airs)."""

from __future__ import annotations

import numpy as np

from flashtalk_live.queue.spool import Spool
from flashtalk_live.queue.streams import LiveStream, StreamRegistry
from flashtalk_live.settings import Settings
from flashtalk_live.playout.timeline import Timeline

from support.level_clips import ManualClock as Clock

CF = 28


class Interleaved(LiveStream):
    """A LiveStream that runs `hook` (another thread's work) at the first read of `ended` once the timeline has cut
    all it has: exactly the instant between the timeline's `remaining == 0` and its `complete`."""

    hook = None
    timeline = None

    @property
    def ended(self) -> bool:
        tl = self.timeline
        if self.hook is not None and tl is not None and tl._cur is not None and tl._cur.pos == self.available:
            hook, self.hook = self.hook, None
            hook()
        return self._ended

    @ended.setter
    def ended(self, v: bool) -> None:
        self._ended = v


def test_a_close_between_the_timelines_two_reads_still_airs_the_decoders_tail(tmp_path):
    st = Settings(state_dir="/nonexistent-state", streams={"prebuffer_s": 0.0})
    spool = Spool(tmp_path / "spool")
    reg = StreamRegistry(st.streams, st.ingest, st.encoder, spool, chunk_s=CF / 25, clock=Clock())
    tl = Timeline(st.video, st.encoder, spool, None, streams=reg, replannable=True)
    # 24 kHz: the resampler to 48 kHz holds back a tail that only the close's flush gives
    sid = reg.open({}, "enqueue", None, format="pcm_s16le", sample_rate=24000, channels=1, declared_s=None,
                   peer="test").entry.segment_id
    live = Interleaved(sid, reg.rate, reg.channels, None)
    reg._live[sid] = reg._open[sid].live = live
    live.timeline = tl
    cut = []
    broadcast = live.broadcast
    live.broadcast = lambda pos, n: cut.append(n) or broadcast(pos, n)
    reg.append(sid, 0, np.full(36000 + 1234, 3000, "<i2").tobytes())  # about 1.55 s: ends in the second chunk
    before = live.available
    live.hook = lambda: reg.close(sid)  # the producer's close, on an ingest worker
    marks = []
    for _ in range(3):
        marks += [m.kind for m in tl.next_chunk().marks]
    assert marks == ["started", "finished"]
    assert live.available > before  # the close gave a tail
    assert sum(cut) == live.available  # ... and it aired
