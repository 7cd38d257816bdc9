"""The event table (flashtalk_live/events.py) is the one place events are declared: every publish call in the package
names a declared type with exactly its declared fields, docs/protocol.md lists every type, and the bus refuses an
undeclared one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from flashtalk_live.events import EVENTS, EventBus, UnknownEvent, events_table

ROOT = Path(__file__).resolve().parents[2]


def _publish_calls():
    """(file:line, type, keyword names or None when the fields are spread from a dict) of every literal publish."""
    for path in sorted((ROOT / "flashtalk_live").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("publish", "_publish") and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                spread = any(k.arg is None for k in node.keywords)
                names = None if spread else {k.arg for k in node.keywords}
                yield f"{path.relative_to(ROOT)}:{node.lineno}", node.args[0].value, names


def test_every_publish_names_a_declared_event_with_its_declared_fields():
    calls = list(_publish_calls())
    assert len(calls) >= 15  # the scan finds the daemon's publish calls
    for where, name, fields in calls:
        assert name in EVENTS, f"{where}: event {name!r} is not in flashtalk_live.events.EVENTS"
        if fields is not None:
            et = EVENTS[name]
            assert fields <= set(et.fields), f"{where}: {name} fields {sorted(fields - set(et.fields))} undeclared"
            assert set(et.fields) - et.optional <= fields, f"{where}: {name} lacks {set(et.fields) - fields}"


def test_the_protocol_doc_carries_the_event_table():
    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert events_table() in doc, "regenerate docs/protocol.md's event table from flashtalk_live.events.events_table()"
    for name in EVENTS:
        assert f"| `{name}` |" in events_table()


def test_the_bus_refuses_an_undeclared_event():
    bus = EventBus()
    seen: list = []
    bus.subscribe(seen.append)
    with pytest.raises(UnknownEvent):
        bus.publish("startd", segment_id="x")
    assert seen == []
    bus.publish("started", segment_id="x", source="queue", frame=0, media_time_s=0.0)
    assert seen[0]["type"] == "started" and seen[0]["seq"] == 1
