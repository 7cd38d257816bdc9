"""Push -> air latency (airlatency.py) from the events a real EventBus carries."""

from __future__ import annotations

import time

from flashtalk_live.airlatency import PushToAir
from flashtalk_live.events import EventBus


def test_each_clip_counts_once_from_its_ack_to_its_first_start():
    bus = EventBus()
    lat = PushToAir(bus)
    bus.publish("accepted", segment_id="a", mode="enqueue", position=0)
    bus.publish("accepted", segment_id="b", mode="enqueue", position=1)
    bus.publish("accepted", segment_id="c", mode="enqueue", position=2)
    time.sleep(0.05)
    bus.publish("started", segment_id="a", source="queue", frame=10)
    bus.publish("started", segment_id="a", source="queue", frame=90)  # a replay after play_now: not a new push
    bus.publish("started", segment_id="prog", source="programme", frame=95)
    bus.publish("dropped", segment_id="c", reason="cancelled")
    st = lat.status()
    assert st["count"] == 1 and st["last_s"] >= 0.05 and st["sum_s"] == st["last_s"]
    assert st["waiting"] == 1  # b; c was dropped
    lat.close()
    bus.publish("started", segment_id="b", source="queue", frame=120)
    assert lat.status()["count"] == 1


def test_the_waiting_set_is_bounded():
    bus = EventBus()
    lat = PushToAir(bus, max_tracked=3)
    for i in range(10):
        bus.publish("accepted", segment_id=f"s{i}", mode="enqueue", position=i)
    assert lat.status()["waiting"] == 3
    bus.publish("started", segment_id="s0", source="queue", frame=1)  # forgotten: not measured
    bus.publish("started", segment_id="s9", source="queue", frame=2)
    assert lat.status()["count"] == 1
