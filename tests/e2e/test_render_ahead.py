"""Render ahead with a fast renderer: no added delay; the in-process room and clip pusher the spill test shares.

The long drills with slow renderers (3 minutes of air each) are tests/e2e/test_playout_drills.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from flashtalk_live.client import Client
from flashtalk_live.daemon import Daemon
from ingest_audiogen import encode
from support.settings import room_settings

FPS, CHUNK = 25, 10  # 0.4 s chunks: a clip's last, partly idle chunk costs little


def settings(tmp_path: Path, *extra: str):
    return room_settings(tmp_path, "video.width=64", "video.height=64", f"video.chunk_frames={CHUNK}",
                         "encoder.video_bitrate=200000", "metrics.enabled=false", *extra)


def clip_marks(events: list[dict], kind: str) -> list[tuple[str, int]]:
    return [(e["segment_id"], e["frame"]) for e in events if e["type"] == kind and e.get("source") == "queue"]


def push_clips(d: Daemon, tmp_path: Path, freqs: list[float], clip_s: float, period_s: float,
               on_event=None) -> tuple[list[dict], list[str], dict]:
    """Start the daemon, push one tone clip per freq every period_s, wait for the last to finish, close it.

    Returns the events, the clips' segment ids and the status read just before closing."""
    events: list[dict] = []
    done = threading.Event()
    ids: list[str] = []

    def watch(e: dict) -> None:
        events.append(e)
        if on_event is not None:
            on_event(e)
        if e["type"] == "finished" and len(ids) == len(freqs) and e.get("segment_id") == ids[-1]:
            done.set()

    d.events.subscribe(watch)
    d.start()
    try:
        with Client(f"ipc://{tmp_path / 'state'}/control.sock", timeout_s=20) as c:
            t0 = time.monotonic()
            for i, f in enumerate(freqs):
                time.sleep(max(0.0, t0 + i * period_s - time.monotonic()))
                ids.append(c.enqueue(encode("wav_s16", seconds=clip_s, freq=f))["segment_id"])
            assert done.wait(120), "the last clip never finished"
            time.sleep(1.0)
            st = c.status()
    finally:
        d.close()
    return events, ids, st


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
