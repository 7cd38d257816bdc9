"""Render ahead with a fast renderer: no added delay (the in-process room: support/render_ahead.py).

The long drills with slow renderers (3 minutes of air each) are tests/e2e/test_playout_drills.py.
"""

from __future__ import annotations

import time

import pytest

from flashtalk_live.client import Client
from flashtalk_live.daemon import Daemon

from support.audiogen import encode
from support.render_ahead import CHUNK, FPS, clip_marks, settings


@pytest.mark.timeout(120)
def test_clip_pushed_to_an_idle_room_with_a_fast_renderer_starts_without_added_delay(tmp_path):
    s = settings(tmp_path)  # the still renderer, no drill: far faster than real time
    d = Daemon(s)
    events: list[dict] = []
    d.events.subscribe(events.append)
    d.start()
    try:
        with Client(f"ipc://{tmp_path / 'state'}/control.sock", timeout_s=20) as c:
            deadline = time.monotonic() + 30
            while d.playout.pacer.frames_out < 2 * FPS and time.monotonic() < deadline:
                time.sleep(0.1)
            on_air_at_push = d.playout.pacer.frames_out
            sid = c.enqueue(encode("wav_s16", seconds=1.0, freq=500.0))["segment_id"]
            deadline = time.monotonic() + 30
            while not clip_marks(events, "finished") and time.monotonic() < deadline:
                time.sleep(0.1)
            st = c.status()
    finally:
        d.close()
    (seg, start), = clip_marks(events, "started")
    assert seg == sid
    ra = st["render_ahead"]
    # Never held back by the gate; on air after at most what the base look-ahead holds (+ the chunk being cut).
    assert ra["waiting_chunks_total"] == 0 and ra["clips_over_floor"] == 0
    assert start - on_air_at_push <= (s.renderer.lookahead_chunks + 2) * CHUNK
    print(f"\nstarted {start - on_air_at_push} frames after the push; render rate {ra['render_rate']}")
