"""Render ahead against edits and crashes (issue 10, item 4), with a real daemon process.

The still renderer is slowed by the operator drill (renderer.drill_slowdown = 1.5), so clips are rendered seconds
before they air: the cases where "taken from the spool" and "on air" differ. Nothing here depends on timing: the
tests wait for states (read from `status` and events), never for durations.
"""

from __future__ import annotations

import time

import pytest

from flashtalk_live.client import EventStream

from support.audiogen import encode
from support.daemon_harness import SLOW_RENDER, Collector, queue_ids, wait_for


@pytest.mark.timeout(240)
def test_sigkill_with_a_full_render_ahead_buffer_loses_no_acknowledged_clip(daemon_factory):
    d = daemon_factory(extra=SLOW_RENDER).start()
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


@pytest.mark.timeout(240)
def test_cancel_of_the_clip_on_air_cuts_it_on_air_within_a_chunk_with_a_deep_buffer(daemon_factory, tmp_path):
    import numpy as np

    from support.air import band_power, decode_audio_mono

    fps, chunk = 25, 28  # the harness's fps and the default chunk (1.12 s)
    freq = 700.0
    d = daemon_factory(extra=SLOW_RENDER).start()
    ev = d.events()
    seen: list[dict] = []
    with d.client(timeout_s=20) as c:
        ev.sync(c)
        sid = c.enqueue(encode("wav_s16", seconds=6.0, freq=freq))["segment_id"]
        started = wait_for(ev, lambda e: e["type"] == "started" and e.get("segment_id") == sid, 120, seen)
        time.sleep(1.2)  # positions the command inside the clip; nothing below depends on how long it took
        before = c.status()
        reply = c.cancel(sid)
        after = c.status()
    assert reply["was"] == "playing"
    buffered = before["render_ahead"]["buffered_s"]
    end = wait_for(ev, lambda e: e.get("segment_id") == sid and e["type"] in ("finished", "interrupted"), 60, seen)
    assert end["type"] == "interrupted", "the cancelled clip played on to its end"
    # On the air's own clock: the command aired between the two status reads; the cut airs at most two chunks
    # later (the chunk on air finishes, the next one carries the cut), however deep the buffer was.
    at_cmd = round(before["broadcast"]["media_time_s"] * fps)
    at_reply = round(after["broadcast"]["media_time_s"] * fps)
    print(f"\nbuffered {buffered} s at the cancel; cut airs {end['frame'] - at_cmd} frames after the command "
          f"(command took {at_reply - at_cmd} frames of air)")
    assert buffered > 2 * chunk / fps, "the buffer was not deep: this would not test cutting on air"
    assert end["frame"] - at_reply <= 2 * chunk
    assert end["frame"] > started["frame"]
    time.sleep(1.5)  # let more air reach the recording after the cut
    with d.client() as c:
        st = c.status()
    assert st["queue"]["clips"] == 0 and not st["playing"]
    ev.close()
    assert d.stop() == 0

    # The recording: the tone is there from `started` to the cut, and gone after it.
    x, first_pts, rate = decode_audio_mono(tmp_path / "rec.flv")
    win = rate // fps
    p = band_power(x, rate, freq, win)
    onset = np.flatnonzero(p > 0.25 * p.max())[0]
    origin = first_pts + onset * win / rate - started["frame"] / fps  # recording time of out_frame 0

    def window(f0: float, f1: float) -> np.ndarray:
        a, b = int((f0 / fps + origin - first_pts) * rate), int((f1 / fps + origin - first_pts) * rate)
        return band_power(x[a:b], rate, freq, win)

    on = window(started["frame"] + 3, end["frame"] - 3)
    off = window(end["frame"] + 3, end["frame"] + 30)
    assert len(on) and len(off) >= 20, (len(on), len(off))
    assert on.min() > 0.2 * np.median(on), "the tone has a gap before the cut"
    assert off.max() < 0.01 * np.median(on), "the tone goes on after the cut"
