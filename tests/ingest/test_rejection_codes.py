"""Every rejection code, provoked for real over ZeroMQ: the daemon's own commands against an in-process Daemon, the
rest against a bare IngestServer. No client mistake comes back as `internal`, and no reply repeats a secret."""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from typing import Iterator

import pytest
import zmq

from flashtalk_live.daemon import Daemon
from flashtalk_live.errors import REJECT_CODES
from flashtalk_live.events import EventBus
from flashtalk_live.ingest.server import IngestServer
from flashtalk_live.queue.spool import Spool

from support.audiogen import pcm_s16le
from support.rooms import inprocess_room

SECRET = "SECRET-KEY-42"


def hdr(**fields) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


def pcm(seconds: float, **cues) -> list[bytes]:
    return [hdr(cmd="enqueue", format="pcm_s16le", sample_rate=16000, channels=1, **cues), pcm_s16le(seconds, 16000, 1)]


def png_header(w: int, h: int, tail: bytes = b"") -> bytes:
    """A PNG signature and IHDR declaring w x h, then `tail` (no picture data unless given)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
            + tail)


def nested(depth: int) -> dict:
    """JSON-like data `depth` levels deep."""
    out: dict = {}
    for _ in range(depth - 1):
        out = {"k": out}
    return out


RECORDINGS = "{state_dir}/recordings"  # output_policy.file_dirs; the daemon expands {state_dir}

# code -> (transport, [requests], field); every request but the last must succeed, the last gets the code (and field).
DAEMON_CASES: dict[str, tuple[str, list[list[bytes]], str | None]] = {
    "bad_json": ("tcp", [[b"{garbage"]], None),
    "bad_header": ("tcp", [[b"[]"]], None),
    "unsupported_version": ("tcp", [[json.dumps({"v": 2, "cmd": "ping"}).encode()]], "v"),
    "unknown_command": ("tcp", [[hdr(cmd="launch")]], None),
    "bad_request": ("tcp", [[hdr(cmd="status", url=f"rtmp://h/app/{SECRET}")]], "url"),
    "unauthorized": ("tcp", [[hdr(cmd="output_add", name="x", url=f"rtmp://h/app/{SECRET}")]], None),
    "missing_audio": ("tcp", [[hdr(cmd="enqueue")]], None),
    "empty_audio": ("tcp", [[hdr(cmd="insert"), b""]], None),
    "undecodable_audio": ("tcp", [[hdr(cmd="enqueue", format="wav"), b"RIFF" + b"\0" * 400]], None),
    "too_long": ("tcp", [pcm(3.0)], None),
    "too_short": ("tcp", [pcm(0.002)], None),
    "oversize": ("tcp", [[b"{" + b" " * 70_000 + b"}"]], None),
    "not_found": ("ipc", [[hdr(cmd="output_remove", name="nope")]], "name"),
    "already_exists": ("ipc", [[hdr(cmd="output_add", name="rec", url=f"{RECORDINGS}/b.flv")]], "name"),
    "bad_output": ("ipc", [[hdr(cmd="output_add", name="x", url=f"rtmpx://h/app/{SECRET}")]], "url"),
    "too_many_outputs": ("ipc", [[hdr(cmd="output_add", name="x", url=f"{RECORDINGS}/x.flv")]], None),
    "forbidden_path": ("ipc", [[hdr(cmd="set_avatar", image="/etc/passwd")]], None),
    "unsupported_image": ("tcp", [[hdr(cmd="set_avatar"), b"not a picture"]], None),
    "image_too_large": ("tcp", [[hdr(cmd="set_avatar"), png_header(8, 8, b"\0" * 5000)]], None),
    "image_too_many_pixels": ("tcp", [[hdr(cmd="set_avatar"), png_header(4000, 4000)]], None),
    "undecodable_image": ("tcp", [[hdr(cmd="set_avatar"), png_header(8, 8, b"garbage")]], None),
    "prompt_too_long": ("tcp", [[hdr(cmd="set_avatar", prompt="p" * 101)]], "prompt"),
    "id_too_long": ("tcp", [[hdr(cmd="ping", id="i" * 201)]], "id"),
    "text_too_long": ("tcp", [[hdr(cmd="overlay_set", name="card", text="字" * 101)]], "text"),
    "unknown_layer": ("tcp", [[hdr(cmd="overlay_show", name="nope")]], "name"),
    "meta_too_deep": ("tcp", [pcm(1.0, meta=nested(9))], "meta"),
    "captions_too_long": ("tcp", [pcm(1.0, captions=[{"text": "字" * 90, "start": 0.0, "end": 0.5},
                                                      {"text": "字" * 90, "start": 0.5, "end": 1.0}])], "captions"),
    # a 64 px wide frame wraps a 30 px caption one character a line: 2,760 px each, measured, never drawn
    "captions_too_large": ("tcp", [pcm(1.0, text="字" * 30)], "captions"),
    "captions_over_budget": ("tcp", [pcm(1.0, text="字" * 15)], "captions"),
    "text_too_large": ("tcp", [[hdr(cmd="overlay_set", name="one", text="W" * 100, font_size=400, width=8192)]],
                       "text"),
    "cue_outside_clip": ("tcp", [pcm(1.0, captions=[{"text": "字", "start": 0.5, "end": 1.5}])], "captions.0"),
    # the AI label is one layer; overlays.max_layers=2 leaves room for one more
    "too_many_layers": ("tcp", [[hdr(cmd="overlay_set", name="one", text="一")],
                                [hdr(cmd="overlay_set", name="two", text="二")]], "name"),
    # idle, or something else on air: either way not the clip named
    "not_on_air": ("tcp", [[hdr(cmd="skip", segment_id="not-this-one")]], "segment_id"),
    # last: the clip stays queued (or on air) while the second one is refused
    "queue_full": ("tcp", [pcm(1.5), pcm(1.5)], None),
}
# Not reachable through one complete daemon: a command with no handler, a handler's own bug, a low disk, a peer over
# its rate, a connection over its in-flight cap (bare servers below).
SERVER_CASES = ("unavailable", "internal", "disk_full", "rate_limited", "busy")
# `move` against a bare server whose spool the test steps itself (a daemon takes clips on its own clock).
MOVE_CODES = ("not_pending",)
# Streamed clips' codes need the segment_id an earlier reply gave: each is provoked against a real daemon, with the
# rest of the room checked undisturbed, in tests/e2e/test_streamed_clips.py::test_bad_stream_input_each_its_own_code.
STREAM_CODES = ("unknown_stream", "stream_closed", "sequence_gap", "stream_too_large", "stream_timed_out",
                "too_many_streams")


def test_every_code_has_a_case():
    assert set(DAEMON_CASES) | set(SERVER_CASES) | set(MOVE_CODES) | set(STREAM_CODES) == set(REJECT_CODES)


@pytest.mark.timeout(60)
def test_move_codes_and_the_new_order(running):
    r = running()
    ids = []
    for _ in range(4):
        reply = ask(r.ipc, pcm(0.5))
        assert reply["ok"], reply
        ids.append(reply["segment_id"])
    on_air = r.spool.take_next()  # the timeline took the head: on air (or rendered ahead), no longer pending
    assert on_air.segment_id == ids[0]
    moved: list[dict] = []
    r.bus.subscribe(lambda e: moved.append(e) if e["type"] == "moved" else None)

    def move(**fields) -> dict:
        return ask(r.tcp, [hdr(cmd="move", **fields)])

    for fields, code, field in [
        ({"segment_id": ids[0], "to": 1}, "not_pending", "segment_id"),
        ({"segment_id": ids[1], "before": ids[0]}, "not_pending", "before"),
        ({"segment_id": "f" * 16, "to": 0}, "not_found", "segment_id"),
        ({"segment_id": ids[1], "after": "f" * 16}, "not_found", "after"),
        ({"segment_id": ids[1]}, "bad_request", "to"),
        ({"segment_id": ids[1], "before": ids[2], "to": 0}, "bad_request", "to"),
        ({"segment_id": ids[1], "after": ids[1]}, "bad_request", "after"),
        ({"segment_id": ids[1], "to": -1}, "bad_request", "to"),
        ({"segment_id": ids[1], "to": "0"}, "bad_request", "to"),
    ]:
        reply = move(**fields)
        assert (reply["ok"], reply["code"], reply.get("field")) == (False, code, field), (fields, reply)
    assert [p["segment_id"] for p in ask(r.ipc, [hdr(cmd="status")])["pending"]] == ids[1:]
    assert moved == []

    reply = move(segment_id=ids[3], before=ids[1], id="req-1")
    reply.pop("ms", None)  # the server's time for the request
    assert reply == {"v": 1, "ok": True, "cmd": "move", "segment_id": ids[3], "position_was": 2, "position": 0,
                     "id": "req-1"}
    from flashtalk_live.client import Client

    with Client(r.ipc) as c:  # the client's method comes from the table too
        assert c.move(ids[1], to=5)["position"] == 2
    status = ask(r.ipc, [hdr(cmd="status")])
    assert [(p["segment_id"], p["position"]) for p in status["pending"]] == [(ids[3], 0), (ids[2], 1), (ids[1], 2)]
    assert [(e["segment_id"], e["position_was"], e["position"]) for e in moved] == [(ids[3], 2, 0), (ids[1], 1, 2)]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    with inprocess_room([
        'ingest.max_clip_seconds=2.0', "queue.max_clips=1", 'ingest.tcp_auth="none"', "ingest.max_image_bytes=4000",
        "ingest.max_image_pixels=1000000", "ingest.max_prompt_chars=100", "output_policy.max_outputs=1",
        "ingest.max_text_chars=100", "overlays.max_layers=2", "ingest.max_meta_depth=8",
        "ingest.max_caption_chars=150", "overlays.max_caption_pixels=50000", "overlays.caption_budget_bytes=1000000",
    ], control='["ipc://{state_dir}/control.sock", "tcp://127.0.0.1:0"]') as d:
        yield d


def ask(endpoint: str, frames: list[bytes]) -> dict:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b""] + frames)
        assert sock.poll(30_000), f"no reply to {frames[0][:60]!r}"
        return json.loads(sock.recv_multipart()[-1])
    finally:
        sock.close(0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("code", list(DAEMON_CASES))
def test_daemon_code(daemon, code):
    transport, requests, field = DAEMON_CASES[code]
    endpoint = next(e for e in daemon.ingest.control_endpoints if e.startswith(transport))
    for frames in requests[:-1]:
        assert ask(endpoint, frames)["ok"]
    reply = ask(endpoint, requests[-1])
    assert (reply["ok"], reply["code"], reply.get("field")) == (False, code, field), reply
    assert reply["reason"] and SECRET not in json.dumps(reply)
    assert ask(endpoint, [hdr(cmd="ping")])["ok"]  # the daemon goes on serving
    if code == "queue_full":
        assert ask(endpoint, [hdr(cmd="clear")])["ok"]


@pytest.mark.timeout(60)
def test_daemon_serves_the_whole_table(daemon):
    ipc = daemon.ingest.control_endpoints[0]
    from flashtalk_live.ingest.commands import COMMANDS

    assert ask(ipc, [hdr(cmd="ping")])["commands"] == sorted(COMMANDS)
    reply = ask(ipc, [hdr(cmd="output_add", name="seg", url="rtmp://h/app/k", segment_seconds=5.0)])
    assert (reply["code"], reply["field"]) == ("bad_output", "segment_seconds")
    reply = ask(ipc, [hdr(cmd="set_avatar", image="/etc/passwd"), b"\x89PNG"])  # data and a path: the data wins
    assert reply["code"] == "unsupported_image"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("code", SERVER_CASES)
def test_server_code(running, make_settings, code):
    release = threading.Event()

    def handler(call):
        if code == "internal":
            raise KeyError("a bug in the handler")
        release.wait(30)  # busy: holds its connection's lane
        return {"outputs": []}

    if code == "disk_full":
        s = make_settings('ingest.tcp_auth="none"', 'ingest.control=["ipc://{state_dir}/control.sock"]',
                          'ingest.events=["ipc://{state_dir}/events.sock"]')
        with Spool.from_settings(s.expanded(s.queue), s.encoder, s.storage) as spool, IngestServer(s.expanded(s.ingest), s.encoder, spool, EventBus(), refuse_clips=lambda: "disk low"):
            reply = ask(s.path(s.ingest.control[0]), pcm(0.5))
        assert (reply["ok"], reply["code"], reply["reason"]) == (False, "disk_full", "disk low")
        return
    overrides = {"rate_limited": ["ingest.rate_per_s=0.01", "ingest.rate_burst=2"],
                 "busy": ["ingest.max_inflight_per_peer=1"]}.get(code, [])
    r = running(*overrides, handlers={"outputs": handler})
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(r.ipc)
    try:
        frames = {"unavailable": [hdr(cmd="output_add", name="x", url="/tmp/x.flv")],
                  "internal": [hdr(cmd="outputs")], "rate_limited": [hdr(cmd="ping")],
                  "busy": [hdr(cmd="outputs")]}[code]
        # rate_limited: a burst of 2, then a third; busy: one in flight on the connection, then a second
        sends = {"rate_limited": 3, "busy": 2}.get(code, 1)
        for _ in range(sends):
            sock.send_multipart([b""] + frames)
        replies = []
        for _ in range(sends):
            assert sock.poll(30_000)
            replies.append(json.loads(sock.recv_multipart()[-1]))
            if not replies[-1]["ok"]:
                release.set()  # busy: the held request may finish now
        refused = [r_ for r_ in replies if not r_["ok"]]
        assert [r_["code"] for r_ in refused] == [code] and len(replies) == sends, replies
    finally:
        release.set()
        sock.close(0)


# A clip's cues, refused after decoding and before the spool: (cues, code, field). The clip is 1.0 s long.
CUE_CASES = [
    ({"captions": [{"text": "一", "start": -0.1, "end": 0.5}]}, "cue_outside_clip", "captions.0"),
    ({"captions": [{"text": "一", "start": 0.0, "end": 0.5}, {"text": "二", "start": 0.6, "end": 0.6}]},
     "cue_outside_clip", "captions.1"),
    ({"overlays": [{"name": "ai_label", "start": 0.5, "end": 1.2}]}, "cue_outside_clip", "overlays.0"),
    ({"overlays": [{"name": "nope", "start": 0.0, "end": 0.5}]}, "unknown_layer", "overlays.0.name"),
    ({"captions": [{"text": "字" * 101, "start": 0.0, "end": 0.5}]}, "text_too_long", "captions.0.text"),
    ({"captions": [{"text": "一", "start": "0", "end": 0.5}]}, "bad_request", "captions.0.start"),
    ({"overlays": [{"name": "ai_label", "start": 0.0, "end": 0.5, "opacity": 1}]}, "bad_request", "overlays.0.opacity"),
]


@pytest.mark.timeout(120)
def test_clip_cues_are_checked_against_the_decoded_clip_and_nothing_is_queued(daemon):
    tcp = next(e for e in daemon.ingest.control_endpoints if e.startswith("tcp"))
    accepted: list[dict] = []

    def on_event(e: dict) -> None:
        if e["type"] == "accepted":
            accepted.append(e)

    daemon.events.subscribe(on_event)
    try:
        check_cues_over_zmq(daemon, tcp, accepted)
    finally:
        daemon.events.unsubscribe(on_event)


def check_cues_over_zmq(daemon, tcp: str, accepted: list[dict]) -> None:
    for cues, code, field in CUE_CASES:
        reply = ask(tcp, pcm(1.0, **cues))
        assert (reply["ok"], reply["code"], reply.get("field")) == (False, code, field), (cues, reply)
    assert accepted == []  # refused before the spool: no clip, no event
    assert ask(tcp, [hdr(cmd="clear")])["ok"]
    deadline = time.monotonic() + 60
    while daemon.spool.stats()["clips"] and time.monotonic() < deadline:  # queue.max_clips=1: room for one
        time.sleep(0.1)
    cues = {"captions": [{"text": "一", "start": 0, "end": 0.5}],
            "overlays": [{"name": "ai_label", "start": 0.25, "end": 1.0}]}
    reply = ask(tcp, [hdr(cmd="enqueue", format="pcm_s16le", sample_rate=16000, channels=1,
                          meta={"captions": "a producer's own key", "k": 1}, **cues), pcm_s16le(1.0, 16000, 1)])
    assert reply["ok"], reply
    meta = next(e["meta"] for e in accepted if e["segment_id"] == reply["segment_id"])
    assert meta == {"k": 1, "captions": [{"text": "一", "start": 0, "end": 0.5}],
                    "overlays": [{"name": "ai_label", "start": 0.25, "end": 1.0}]}
    assert ask(tcp, [hdr(cmd="clear")])["ok"]
