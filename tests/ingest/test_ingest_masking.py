"""The reply boundary and the event bus mask whatever a handler, the status provider or a publisher hands them."""

from __future__ import annotations

import pytest

from flashtalk_live.client import Client, EventStream, Rejected

RAW = "RTMP://user:PASSWORD1@h:1935/live/STREAMKEY1?token=TOKEN1"
SECRETS = ("PASSWORD1", "STREAMKEY1", "TOKEN1")


def _clean(obj: object) -> bool:
    return not any(s in repr(obj) for s in SECRETS)


def test_replies_status_and_events_are_masked(running) -> None:
    # Two table commands with handlers that leak on purpose: one in its reply, one in its exception.
    def echo(call) -> dict:
        return {"url": RAW, "nested": [{"why": f"could not open {RAW}: refused"}]}

    def boom(call) -> dict:
        raise OSError(f"cannot open {RAW}")

    r = running(handlers={"outputs": echo, "output_remove": boom},
                status_provider=lambda: {"outputs": [{"last_error": RAW}]})
    with Client(r.ipc) as c, EventStream(r.events) as ev:
        ev.sync(c)
        reply = c.call("outputs")
        assert reply["url"] == "RTMP://***@h:1935/live/****?****" and _clean(reply)
        with pytest.raises(Rejected) as e:
            c.call("output_remove", name="x")
        assert "RTMP://***@h:1935/live/****" in e.value.reason and _clean(e.value.reply)
        assert _clean(c.status())
        r.bus.publish("endpoint_down", output="x", url=RAW, error=f"EOFError: {RAW}")
        event = ev.get(10)
        assert event is not None and event["type"] == "endpoint_down"
        assert event["url"] == "RTMP://***@h:1935/live/****?****" and _clean(event)
