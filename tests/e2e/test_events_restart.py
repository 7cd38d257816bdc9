"""Issue 21: a subscriber that stays connected across daemon restarts sees every event of each new life from its
first (seq 1 on): the daemon holds its first events back until reconnecting subscribers are back."""

from __future__ import annotations

import pytest

from support.audiogen import encode
from support.daemon_harness import wait_for


@pytest.mark.timeout(240)
def test_a_subscriber_across_restarts_misses_no_event_of_the_new_life(daemon_factory):
    d = daemon_factory().start()
    ev = d.events()  # one subscription for all five lives: libzmq reconnects it
    with d.client() as c:
        ev.sync(c)
        sid = c.enqueue(encode("wav_s16", seconds=30.0, freq=500))["segment_id"]
    wait_for(ev, lambda e: e["type"] == "started" and e.get("segment_id") == sid, 120)
    for life in range(5):
        assert d.stop() == 0  # the clip on air stays in the spool and starts again in the next life
        while ev.get(0.3) is not None:  # the last life's tail (stopping, endpoint_down)
            pass
        d.start()
        seen: list[dict] = []
        wait_for(ev, lambda e: e["type"] == "started" and e.get("segment_id") == sid, 120, seen)
        seqs = [e["seq"] for e in seen]
        assert seqs == list(range(1, len(seqs) + 1)), (life, [(e["seq"], e["type"]) for e in seen])
    ev.close()
    assert d.stop() == 0
