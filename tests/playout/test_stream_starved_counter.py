"""`flashtalk_producer_starved_seconds` is exported as a Prometheus counter (metrics.py, from the daemon's
`producer_starved_seconds` = timeline.starved_samples / rate): it must never go down. The timeline counts a
producer's pause when it cuts the chunk and gives it back when a re-plan undoes that chunk (buffered, not on air), so
the exported value falls after such a re-plan, which a scraper reads as a counter reset."""

from __future__ import annotations

import numpy as np
import pytest

from flashtalk_live.playout.pacing import Lookahead
from flashtalk_live.playout.replan import Replanner
from flashtalk_live.playout.timeline import Timeline
from flashtalk_live.queue.spool import Spool
from flashtalk_live.queue.streams import StreamRegistry
from flashtalk_live.settings import Settings

CF, SPF = 28, 1920


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="starved pauses are counted when cut, not when aired; a re-plan subtracts "
                                       "them (review-streams: no fix)")
def test_the_starved_seconds_counter_never_goes_down_across_a_replan(tmp_path):
    st = Settings(state_dir="/nonexistent-state", streams={"prebuffer_s": 0.0})
    spool = Spool(tmp_path / "spool")
    reg = StreamRegistry(st.streams, st.ingest, st.encoder, spool, chunk_s=CF / 25, clock=lambda: 0.0)
    tl = Timeline(st.video, st.encoder, spool, None, streams=reg, replannable=True)
    rp = Replanner(tl, Lookahead(8), poll_s=0.001)
    sid = reg.open({}, "enqueue", None, format="pcm_s16le", sample_rate=48000, channels=2, declared_s=None,
                   peer="t").entry.segment_id
    reg.append(sid, 0, np.full((CF * SPF, 2), 512, "<i2").tobytes())
    exported = []
    for _ in range(2):
        rp.next_chunk()
        exported.append(tl.starved_samples / 48000)
    tl.rewind(CF)  # an edit re-plans the buffered chunk holding the pause
    exported.append(tl.starved_samples / 48000)
    assert exported == sorted(exported), exported
