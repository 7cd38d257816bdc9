"""The render-ahead tests' in-process room (64x64, 0.4 s chunks) and a pusher of tone clips at a steady period."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from flashtalk_live.client import Client
from flashtalk_live.daemon import Daemon

from support.audiogen import encode
from support.settings import room_settings
from support.waiting import until

FPS, CHUNK = 25, 10  # 0.4 s chunks: a clip's last, partly idle chunk costs little


def settings(tmp_path: Path, *extra: str):
    return room_settings(tmp_path, "video.width=64", "video.height=64", f"video.chunk_frames={CHUNK}",
                         "encoder.video_bitrate=200000", "metrics.enabled=false", *extra)


def clip_marks(events: list[dict], kind: str) -> list[tuple[str, int]]:
    return [(e["segment_id"], e["frame"]) for e in events if e["type"] == kind and e.get("source") == "queue"]


def push_clips(d: Daemon, tmp_path: Path, freqs: list[float], clip_s: float, period_s: float,
               on_event=None, renderer: str | None = None) -> tuple[list[dict], list[str], dict]:
    """Start the daemon, push one tone clip per freq every period_s, wait for the last to finish, close it.
    renderer: wait until that renderer is on duty before the first push (it loads once the first frame is out).

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
            if renderer is not None:
                until(lambda: d.renderers.current_name() == renderer, 60, f"the {renderer} renderer on duty")
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
