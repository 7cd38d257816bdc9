"""Render ahead against edits and crashes (issue 10, item 4), with a real daemon process.

The still renderer is slowed by the operator drill (renderer.drill_slowdown = 2.0), so clips are rendered seconds
before they air: the cases where "taken from the spool" and "on air" differ. Nothing here depends on timing: the
tests wait for states (read from `status` and events), never for durations.
"""

from __future__ import annotations

import threading
import time

import pytest

from flashtalk_live.client import EventStream
from ingest_audiogen import encode

from daemon_harness import wait_for

SLOW = ["renderer.drill_slowdown=2.0", "renderer.lookahead_s=20"]


class Collector:
    """Reads an event stream on a thread into `seen` (the main thread keeps the control socket)."""

    def __init__(self, stream: EventStream) -> None:
        self.stream, self.seen = stream, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ev = self.stream.get(0.1)
            if ev is not None:
                self.seen.append(ev)

    def stop(self) -> list[dict]:
        self._stop.set()
        self._t.join(5)
        return self.seen


def queue_ids(events: list[dict], kind: str) -> list[str]:
    return [e["segment_id"] for e in events if e["type"] == kind and e.get("source") == "queue"]


@pytest.mark.timeout(240)
def test_sigkill_with_a_full_render_ahead_buffer_loses_no_acknowledged_clip(daemon_factory):
    d = daemon_factory(extra=SLOW).start()
    ev = d.events()
    with d.client(timeout_s=20) as c:
        ev.sync(c)
        col = Collector(ev)
        ids = [c.enqueue(encode("wav_s16", seconds=2.0, freq=400 + 150 * i))["segment_id"] for i in range(4)]
        # Kill once a clip has finished on air, idle is on air, and the next clip is taken from the spool (being
        # rendered into the buffer) but has not started on air.
        deadline, st = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            st = c.status()
            started = set(queue_ids(col.seen, "started"))
            taken_not_aired = [e["segment_id"] for e in st["playing"] if e["segment_id"] not in started]
            if (queue_ids(col.seen, "finished") and st["on_air"] is None and taken_not_aired
                    and st["render_ahead"]["buffered_s"] >= 2.0):
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"never saw a clip buffered but not on air: {st}")
    d.kill()
    time.sleep(0.5)  # events already delivered to our socket before the kill
    before = col.stop()
    ev.close()
    finished_before = queue_ids(before, "finished")
    assert finished_before and finished_before == ids[:len(finished_before)]
    assert taken_not_aired[0] not in finished_before
    rest = [i for i in ids if i not in finished_before]
    print(f"\nkilled with {st['render_ahead']['buffered_s']} s buffered; finished {len(finished_before)}, "
          f"taken not aired {taken_not_aired}, to replay {len(rest)}")

    ev2 = EventStream(d.events_ipc, timeout_s=30.0)  # connected before the bind: sees the first recovered clip
    d.start()
    seen: list[dict] = []
    wait_for(ev2, lambda e: e["type"] == "finished" and e.get("segment_id") == ids[-1], 150, seen)
    # Every acknowledged clip that had not finished on air airs once, in order; none that had finished airs again.
    assert queue_ids(seen, "started") == rest, (queue_ids(seen, "started"), rest)
    assert queue_ids(seen, "finished") == rest
    assert not queue_ids(seen, "interrupted")
    with d.client() as c:
        st = c.status()
    assert st["queue"]["clips"] == 0 and not st["playing"] and not st["pending"]
    ev2.close()
    assert d.stop() == 0
