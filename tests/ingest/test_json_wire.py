"""Every field of every command, sent in its JSON form through the real wire (a ZeroMQ DEALER to a running daemon):
nothing a JSON client can spell is refused for its form (issue 19: `overlay_set` with "margin": [16, 220] was refused,
strict validation wanted a tuple no JSON client can send). The examples must cover each command's every field, so a
field added to the table without a case here fails the coverage test."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import zmq
from PIL import Image

from flashtalk_live.daemon import Daemon
from flashtalk_live.ingest.commands import COMMANDS

from support.audiogen import pcm_s16le
from support.rooms import inprocess_room

FORM_CODES = {"bad_request", "bad_header", "bad_json"}  # what a refused form would answer


def png(w: int = 16, h: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (w, h), (200, 30, 30, 180)).save(buf, "PNG")
    return buf.getvalue()


def clip(seconds: float = 3.0) -> bytes:
    return pcm_s16le(seconds, 16000, 1)


RAW = {"format": "pcm_s16le", "sample_rate": 16000, "channels": 1}
AUDIO = {**RAW, "meta": {"sku": 42, "tags": ["a", "b"], "nested": {"x": None}}, "text": "大家好",
         "captions": [{"text": "大家好", "start": 0, "end": 1.5}], "overlays": [{"name": "card", "start": 0.5, "end": 2}]}
# (command, fields exactly as a JSON client writes them, data frame, codes besides ok that the state may answer).
# "{q0}".."{q3}": segment ids of the clips queued by the enqueue cases; "{avatar}", "{rec}": paths in the room.
CASES: list[tuple[str, dict[str, Any], bytes | None, set[str]]] = [
    ("ping", {"id": "p-1", "event": True, "nonce": "n-1"}, None, set()),
    ("overlay_set", {"id": "o-1", "name": "card", "text": "价格 99 元", "anchor": "bottom_right", "margin": [16, 220],
                     "width": 300, "font_size": 30, "opacity": 0.9, "fade_s": 0.2}, None, set()),
    ("overlay_set", {"name": "logo", "anchor": "top_right", "margin": [0, 0], "opacity": 1}, png(), set()),
    ("overlay_show", {"id": "o-2", "name": "card", "seconds": 5.5}, None, set()),
    ("overlay_hide", {"id": "o-3", "name": "card"}, None, set()),
    ("enqueue", {"id": "q-0", **AUDIO, "name": "opening"}, clip(), set()),
    ("enqueue", {**RAW, "name": "second"}, clip(), set()),
    ("insert", {"id": "q-2", **AUDIO, "name": "third"}, clip(), set()),
    ("play_now", {"id": "q-3", **AUDIO, "name": "now"}, clip(), set()),
    ("status", {"id": "s-1"}, None, set()),
    ("outputs", {"id": "s-2"}, None, set()),
    ("move", {"id": "m-1", "segment_id": "{q1}", "to": 0}, None, {"not_pending"}),
    ("move", {"segment_id": "{q1}", "before": "{q2}"}, None, {"not_pending"}),
    ("move", {"segment_id": "{q1}", "after": "{q2}"}, None, {"not_pending"}),
    ("skip", {"id": "k-1", "segment_id": "{on_air}"}, None, {"not_on_air"}),
    ("cancel", {"id": "c-1", "segment_id": "{q2}"}, None, {"not_found"}),
    ("set_avatar", {"id": "a-1", "image": "{avatar}", "prompt": "a presenter"}, None, set()),
    ("set_avatar", {"prompt": "the same presenter"}, png(), set()),
    ("output_add", {"id": "x-1", "name": "extra", "url": "{rec}", "segment_seconds": 60}, None, set()),
    ("output_remove", {"id": "x-2", "name": "extra"}, None, set()),
    ("clip_open", {"id": "so-1", **AUDIO, "name": "streamed", "mode": "enqueue", "duration_s": 2.0}, None, set()),
    ("clip_append", {"id": "sa-1", "segment_id": "{s0}", "seq": 0}, clip(0.5), set()),
    ("clip_close", {"id": "sc-1", "segment_id": "{s0}", "duration_s": 0.5}, None, set()),
    ("clip_open", {**RAW, "mode": "insert"}, None, set()),
    ("clip_abort", {"id": "sx-1", "segment_id": "{s1}"}, None, set()),
    ("clear", {"id": "z-1"}, None, set()),
]


def test_the_cases_cover_every_field_of_every_command():
    for name, command in COMMANDS.items():
        used = set().union(*(set(f) for c, f, _, _ in CASES if c == name)) if any(c == name for c, *_ in CASES) else set()
        assert used == set(command.args.model_fields), f"{name}: no JSON case for {set(command.args.model_fields) - used}"


def _avatars(folder: Path) -> None:
    (folder / "avatars").mkdir()
    Image.new("RGB", (64, 64), (90, 120, 160)).save(folder / "avatars" / "face.png")


@pytest.fixture
def room() -> Iterator[Daemon]:
    with inprocess_room(['ingest.avatar_dirs=["{state_dir}/avatars"]'], prepare=_avatars) as d:
        yield d


def _fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("{") and value.endswith("}") and value[1:-1] in names:
        return names[value[1:-1]]
    return value


@pytest.mark.timeout(120)
def test_every_field_in_json_form_through_zeromq(room):
    d = room
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(d.ingest.control_endpoints[0])
    names = {"avatar": str(Path(d.s.path(d.s.ingest.avatar_dirs[0])) / "face.png"),
             "rec": str(Path(d.s.path(d.s.state_dir)) / "recordings" / "extra.flv")}
    queued: list[str] = []
    streams: list[str] = []
    seen: list[dict[str, Any]] = []
    d.events.subscribe(seen.append)
    status: dict[str, Any] = {}
    try:
        for cmd, fields, data, allowed in CASES:
            names["on_air"] = d.playout.on_air or "nothing-on-air"
            names.update({f"q{i}": sid for i, sid in enumerate(queued)})
            names.update({f"s{i}": sid for i, sid in enumerate(streams)})
            header = json.dumps({"v": 1, "cmd": cmd, **{k: _fill(v, names) for k, v in fields.items()}}).encode()
            sock.send_multipart([b"", header] + ([data] if data is not None else []))
            assert sock.poll(30_000), f"no reply to {cmd}"
            reply = json.loads(sock.recv_multipart()[-1])
            assert reply["ok"] or reply["code"] in allowed, (cmd, fields, reply)
            assert reply.get("code") not in FORM_CODES, (cmd, fields, reply)
            if reply.get("id") is None:
                assert "id" not in fields
            else:
                assert reply["id"] == fields["id"]
            if cmd == "status":
                status = reply
            if cmd in ("enqueue", "insert", "play_now"):
                queued.append(reply["segment_id"])
            if cmd == "clip_open":
                streams.append(reply["segment_id"])
    finally:
        sock.close(0)
    # What the JSON said is what the daemon keeps: the placement, and the clips' names.
    placement = d.compositor.placement()
    assert placement["card"] == {"kind": "text", "anchor": "bottom_right", "margin": [16, 220], "text": "价格 99 元"}
    assert placement["logo"]["kind"] == "image" and placement["logo"]["margin"] == [0, 0]
    assert [e.get("name") for e in seen if e["type"] == "accepted" and not e.get("stream")] == \
        ["opening", "second", "third", "now"]
    assert {r.get("name") for r in status["pending"] + status["playing"]} <= {"opening", "second", "third", "now"}
    assert any(r.get("name") for r in status["pending"] + status["playing"]), status
