"""Issue 21's smaller items through a real daemon process: `status` prints a summary (the whole reply with --json),
queued seconds leave out what already aired, no output starts with a dropped packet, and the log carries a periodic
`health` line."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from support.audiogen import encode
from support.daemon_harness import wait_for
from support.paths import child_env


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flashtalk_live", *args], capture_output=True, text=True,
                          env=child_env(), timeout=60)


@pytest.mark.timeout(180)
def test_status_summary_queued_seconds_outputs_and_the_health_line(daemon_factory):
    d = daemon_factory(extra=["logging.health_interval_s=1"]).start()
    ev = d.events()
    with d.client() as c:
        ev.sync(c)
        first = c.enqueue(encode("wav_s16", seconds=8.0, freq=500))["segment_id"]
        for i in range(8):
            c.enqueue(encode("wav_s16", seconds=1.0, freq=600 + 50 * i))
        started = wait_for(ev, lambda e: e["type"] == "started" and e.get("segment_id") == first, 120)
        time.sleep(2.0)  # a part of the clip airs; nothing below depends on how much
        st = c.status()

        # Queued seconds: 8 + 8 x 1 s queued, less what of the clip on air already aired.
        q = st["queue"]
        played = q["on_air_played_s"]
        aired_since_start = st["broadcast"]["media_time_s"] - started["media_time_s"]
        assert played > 0.5 and abs(played - aired_since_start) < 0.2, (played, aired_since_start)
        assert q["queued_seconds"] == pytest.approx(16.0 - played, abs=0.05)
        # Every output starts clean: the encoder's priming packet is no drop; no error while it is up.
        for o in st["outputs"]:
            assert o["state"] == "up" and o["dropped_packets"] == 0 and o["last_error"] is None, o

        summary = cli("status", "-c", str(d.config))
        full = cli("status", "--json", "-c", str(d.config))
    ev.close()
    assert summary.returncode == 0 and full.returncode == 0, summary.stderr + full.stderr
    lines = summary.stdout.splitlines()
    print("\n" + summary.stdout)
    assert len(lines) < 25, len(lines)
    assert lines[0].startswith("state: on_air") and first in lines[0]
    assert any(ln.startswith("queue: ") and "s queued" in ln for ln in lines)
    assert any("... " in ln and "more" in ln for ln in lines)  # 8 clips behind: the summary lists 5 of a kind
    assert "outputs: 1 of 1 up" in lines and any(ln.startswith("renderer: still") for ln in lines)
    assert lines[-1] == "(everything: flashtalk-live status --json)"
    reply = json.loads(full.stdout)
    assert {"queue", "playing", "pending", "broadcast", "render_ahead", "plan", "outputs", "storage"} <= set(reply)
    assert len(reply["playing"]) + len(reply["pending"]) == 9

    time.sleep(1.5)
    assert d.stop() == 0
    health = [ln for ln in d.log_lines() if ln.get("event") == "health"]
    assert len(health) >= 2, [ln.get("event") for ln in d.log_lines()]
    h = health[-1]
    assert h["state"] == "on_air" and h["renderer"] == "still" and h["outputs_up"] == "1/1"
    assert {"buffered_s", "underruns", "on_air", "queue_clips"} <= set(h)
