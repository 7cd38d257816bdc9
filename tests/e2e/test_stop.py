"""Issue 21 item 5 through a real daemon process: SIGTERM with a clip on air loses nothing acknowledged and leaves a
finalised recording. How long the stop takes is benchmarks/stop_time.py's business, never a pass/fail here."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from support.audiogen import encode
from support.daemon_harness import wait_for
from support.rtmp_harness import read_media


def flv_header_number(path: Path, key: bytes) -> float:
    """An AMF0 number of the FLV onMetaData tag (duration, filesize): 0 until the muxer's trailer rewrites it."""
    head = path.read_bytes()[:1024]
    i = head.index(key) + len(key)
    assert head[i] == 0, f"{key!r} is not an AMF number"
    return struct.unpack(">d", head[i + 1:i + 9])[0]


@pytest.mark.timeout(240)
def test_sigterm_with_a_clip_on_air_finalises_the_recording_and_the_clip_airs_again(daemon_factory, tmp_path):
    d = daemon_factory()
    d.start()
    ev = d.events()
    seen: list[dict] = []
    with d.client() as c:
        ev.sync(c)
        on_air = c.enqueue(encode("wav_s16", seconds=20.0, freq=500))["segment_id"]
        waiting = c.enqueue(encode("wav_s16", seconds=1.0, freq=700))["segment_id"]
        wait_for(ev, lambda e: e["type"] == "started" and e.get("segment_id") == on_air, 120, seen)
        time.sleep(1.5)  # well inside the clip (20 s): positions the stop, nothing below depends on how long
    ev.close()
    assert d.stop() == 0
    assert not list(d.state_dir.glob("*.sock")), "a clean stop removes its sockets"
    assert not any(e["type"] == "finished" and e.get("segment_id") == on_air for e in seen)

    # The recording is a finished file: the muxer's trailer wrote duration and size, and every packet decodes.
    rec = tmp_path / "rec.flv"
    info = read_media(rec, decode=True)
    assert not info.errors, info.errors
    assert info.video_packets > 25 and info.audio_packets > 25
    duration = flv_header_number(rec, b"duration")
    assert duration > 1.0 and abs(duration - info.video_end) < 0.5, (duration, info.video_end)
    assert flv_header_number(rec, b"filesize") == rec.stat().st_size

    # Nothing acknowledged is lost: the clip cut by the stop is still in the spool (playing: it replays from its
    # start, docs/protocol.md), the one behind it still pending, in that order; then both air.
    ev = d.events()
    d.start()
    with d.client() as c:
        st = c.status()
        assert [e["segment_id"] for e in st["playing"]] + [e["segment_id"] for e in st["pending"]] == \
            [on_air, waiting], st
        ev.sync(c)
    seen = []
    wait_for(ev, lambda e: e["type"] == "started" and e.get("segment_id") == waiting, 120, seen)
    ev.close()
    assert d.stop() == 0
    recovered = [line for line in d.log_lines() if line.get("event") == "queue_recovered"]
    assert recovered and on_air in recovered[-1]["segment_ids"]
