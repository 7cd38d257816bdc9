"""latency.PushToAir: each queue clip's push->air once, by kind, from the events' monotonic times."""

from __future__ import annotations

from flashtalk_live.events import EventBus
from flashtalk_live.latency import BUCKETS, PushToAir


def test_kinds_first_air_only_and_the_histogram():
    bus = EventBus()
    idle = [True]
    first_bytes: dict[str, float] = {}
    p = PushToAir(room_idle=lambda: idle[0], first_byte=first_bytes.get)
    bus.subscribe(p.on_event)
    got: list[dict] = []
    bus.subscribe(got.append)

    def accept(sid: str, mode: str, **kw) -> float:
        return bus.publish("accepted", segment_id=sid, mode=mode, **kw)["mono"]

    def start(sid: str, **kw) -> float:
        return bus.publish("started", segment_id=sid, source="queue", **kw)["mono"]

    t_a = accept("a", "enqueue")
    idle[0] = False
    t_b = accept("b", "enqueue")
    t_c = accept("c", "play_now")
    # a stream counts from its first byte, here 5 s before its accept (not from the accept, as whole clips do)
    first_bytes["s"] = accept("s", "enqueue", stream=True) - 5.0
    accept("gone", "insert")
    bus.publish("dropped", segment_id="gone", reason="cancelled")
    air = {sid: start(sid) for sid in ("a", "c", "b", "s")}
    start("c", requeued=True)  # a replay never counts twice
    start("gone")
    st = p.status()
    assert all("mono" in e for e in got)
    assert st["enqueue_idle"]["count"] == 1 and abs(st["enqueue_idle"]["max_s"] - (air["a"] - t_a)) < 1e-3
    assert st["enqueue_behind"]["count"] == 1 and abs(st["enqueue_behind"]["p50_s"] - (air["b"] - t_b)) < 1e-3
    assert st["play_now"]["count"] == 1 and abs(st["play_now"]["sum_s"] - (air["c"] - t_c)) < 1e-3
    stream = st["stream_first_byte"]
    assert stream["count"] == 1 and abs(stream["max_s"] - (air["s"] - first_bytes["s"])) < 1e-3
    assert st["insert"]["count"] == 0 and st["insert"]["p50_s"] is None
    p.observe("insert", 0.7)
    p.observe("insert", 20.0)
    b = dict((le, c) for le, c in p.status()["insert"]["buckets"])
    assert b[0.5] == 0 and b[0.75] == 1 and b[10.0] == 1 and b[30.0] == 2 and len(b) == len(BUCKETS)
