"""The front door for real: IngestServer on ipc and tcp, Client over DEALER (and a raw REQ), PUB events in order."""

from __future__ import annotations

import json
import threading
import time

import pytest
import zmq

from flashtalk_live.client import Client, ClientTimeout, EventStream, Rejected
from flashtalk_live.errors import Rejection
from flashtalk_live.events import EventBus
from flashtalk_live.ingest.commands import AUDIO_COMMANDS
from flashtalk_live.ingest.protocol import encode_request
from flashtalk_live.ingest.server import IngestServer
from flashtalk_live.queue.spool import Spool


def drain(stream: EventStream, n: int, timeout: float = 5.0) -> list[dict]:
    out = []
    end = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        ev = stream.get(max(0.0, end - time.monotonic()))
        if ev is not None and ev["type"] != "pong":
            out.append(ev)
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_every_format_accepted_with_events_in_order(running, clips, transport):
    r = running()
    control = r.ipc if transport == "ipc" else r.tcp
    events = [e for e in r.server.event_endpoints if e.startswith(transport)][0]
    with Client(control, timeout_s=5) as c, EventStream(events) as ev:
        ev.sync(c)
        acks = []
        for name, (data, fields) in clips.items():
            ack = c.enqueue(data, **fields, request_id=f"{transport}-{name}")
            assert ack["ok"] and ack["cmd"] == "enqueue" and ack["id"] == f"{transport}-{name}"
            assert 0.58 <= ack["duration_s"] <= 0.7, (name, ack)
            assert ack["position"] == len(acks)
            acks.append(ack)
        got = drain(ev, len(acks))
    assert [e["type"] for e in got] == ["accepted"] * len(acks)
    assert [e["segment_id"] for e in got] == [a["segment_id"] for a in acks]
    assert all(e["seq"] < f["seq"] and e["ts"] <= f["ts"] for e, f in zip(got, got[1:]))
    assert [e.segment_id for e in r.spool.pending()] == [a["segment_id"] for a in acks]
    # each stored payload decodes again to the same duration (the timeline's load_audio path)
    for a in acks:
        assert abs(r.spool.load_audio(a["segment_id"]).duration_s - a["duration_s"]) < 1e-6


@pytest.mark.timeout(60)
def test_queue_commands_through_socket(running, clips):
    r = running()
    wav = clips["wav_s16"][0]
    with Client(r.tcp, timeout_s=5) as c, EventStream(r.events) as ev:
        ev.sync(c)
        p = c.ping()
        assert p["pong"] and p["protocol"] == 1 and p["max_message_bytes"] == r.settings.ingest.max_message_bytes
        a, b, d = (c.enqueue(wav, meta={"n": n})["segment_id"] for n in "abd")
        playing = r.spool.take_next()  # what the timeline does when a starts on air
        assert playing.segment_id == a
        i1 = c.insert(wav)
        i2 = c.insert(wav)
        assert (i1["position"], i2["position"]) == (0, 1)
        assert not r.spool.interrupt_pending()
        pn = c.play_now(wav)
        assert pn["position"] == 0 and r.spool.interrupt_pending()
        st = c.status()
        assert st["daemon"] == "test" and st["queue"]["pending"] == 5 and st["queue"]["playing"] == 1
        order = [e["segment_id"] for e in st["pending"]]
        assert order == [pn["segment_id"], i1["segment_id"], i2["segment_id"], b, d]
        assert [e["segment_id"] for e in st["playing"]] == [a]

        assert c.cancel(i2["segment_id"])["was"] == "pending"
        with pytest.raises(Rejected) as ei:
            c.cancel(i2["segment_id"])
        assert ei.value.code == "not_found"
        assert c.cancel(a)["was"] == "playing"
        cl = c.clear()
        assert cl["cleared"] == [pn["segment_id"], i1["segment_id"], b, d] and cl["count"] == 4
        assert c.status()["queue"]["pending"] == 0
        got = drain(ev, 6 + 2 + 1 + 4 + 1)
    types = [(e["type"], e.get("segment_id")) for e in got]
    assert types[:5] == [("accepted", x) for x in (a, b, d, i1["segment_id"], i2["segment_id"])]
    assert types[5] == ("accepted", pn["segment_id"])
    assert types[6:8] == [("cancelled", i2["segment_id"]), ("dropped", i2["segment_id"])]
    assert types[8] == ("cancelled", a) and got[8]["was"] == "playing"
    assert types[9:13] == [("dropped", x) for x in cl["cleared"]]
    assert types[13][0] == "cleared" and got[13]["segment_ids"] == cl["cleared"]
    assert got[6 + 1]["reason"] == "cancelled" and got[9]["reason"] == "cleared"


def raw_dealer(endpoint: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def ask(sock: zmq.Socket, frames: list[bytes], timeout: float = 5.0) -> dict:
    sock.send_multipart(frames)
    assert sock.poll(int(timeout * 1000)), f"no reply to {frames!r:.80}"
    return json.loads(sock.recv_multipart()[-1])


@pytest.mark.timeout(90)
def test_bad_input_gets_its_code_and_server_keeps_serving(running, clips):
    r = running("ingest.max_message_bytes=2000000", "ingest.max_clip_seconds=2.0",
                "queue.max_spool_bytes=1500000", "queue.max_clips=3")
    wav = clips["wav_s16"][0]
    hdr = lambda **f: json.dumps({"v": 1, **f}).encode()  # noqa: E731
    cases = [
        ([b"garbage"], "bad_json"),
        ([b'{"v":1,"cmd":"enq'], "bad_json"),                       # truncated
        ([b"\xff\x00\x01"], "bad_json"),
        ([b"[]"], "bad_header"),
        ([json.dumps({"v": 2, "cmd": "ping"}).encode()], "unsupported_version"),
        ([json.dumps({"cmd": "ping"}).encode()], "bad_header"),
        ([hdr(cmd="launch")], "unknown_command"),
        ([hdr(cmd="enqueue")], "missing_audio"),
        ([hdr(cmd="enqueue"), b""], "empty_audio"),
        ([hdr(cmd="enqueue", format="wav"), b"RIFF" + b"\x00" * 500], "undecodable_audio"),
        ([hdr(cmd="enqueue"), wav[: len(wav) // 3][:30]], "undecodable_audio"),
        ([hdr(cmd="enqueue", format="pcm_s16le", sample_rate=16000, channels=1), b"\x00" * 201], "undecodable_audio"),
        ([hdr(cmd="enqueue", format="pcm_s16le", sample_rate=16000, channels=1), b"\x00" * 3 * 32000], "too_long"),
        ([hdr(cmd="enqueue", format="pcm_s16le", sample_rate=16000, channels=1), b"\x00" * 64], "too_short"),
        # under MAXMSGSIZE but more than the spool can ever hold
        ([hdr(cmd="enqueue", format="pcm_s16le", sample_rate=8000, channels=1), b"\x00" * 1_600_000], "oversize"),
        ([hdr(cmd="ping"), b"x", b"y"], "bad_header"),
        ([hdr(cmd="cancel", segment_id="nope")], "not_found"),
    ]
    before = r.spool.stats()
    sock = raw_dealer(r.ipc)
    for frames, code in cases:
        # bare DEALER framing, and the REQ-like framing with an empty delimiter
        for framing in (frames, [b""] + frames):
            reply = ask(sock, framing)
            assert reply["ok"] is False and reply["code"] == code, (frames[0][:40], reply)
            assert reply["reason"] and reply["v"] == 1
            assert ask(sock, [hdr(cmd="ping")])["ok"]
    assert r.spool.stats()["clips"] == before["clips"] == 0  # a rejected clip changes nothing
    sock.close(0)

    # bigger than MAXMSGSIZE: libzmq drops the connection without a word -> the client times out
    with Client(r.tcp, timeout_s=1.5) as c:
        with pytest.raises(ClientTimeout) as ei:
            c.enqueue(b"\x00" * 2_100_000, format="pcm_s16le", sample_rate=16000, channels=1)
        assert "MAXMSGSIZE" in str(ei.value)
        assert c.ping()["pong"]  # same Client, fresh socket, server alive

    # queue_full after three clips; a resend of an accepted id is answered, not refused
    with Client(r.ipc) as c:
        first = c.enqueue(wav, request_id="r-1")
        c.enqueue(wav)
        c.enqueue(wav)
        with pytest.raises(Rejected) as ei:
            c.enqueue(wav)
        assert ei.value.code == "queue_full"
        again = c.enqueue(wav, request_id="r-1")
        assert again["duplicate"] and again["segment_id"] == first["segment_id"]
        assert c.status()["queue"]["clips"] == 3


@pytest.mark.timeout(60)
def test_req_socket_envelope(running):
    r = running()
    s = zmq.Context.instance().socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.REQ_RELAXED, 1)
    s.setsockopt(zmq.REQ_CORRELATE, 1)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(r.tcp)
    for _ in range(3):
        s.send_multipart(encode_request("ping"))
        assert json.loads(s.recv())["pong"]
    s.send_multipart([b"nonsense"])
    assert json.loads(s.recv())["code"] == "bad_json"
    s.close(0)
    plain = zmq.Context.instance().socket(zmq.REQ)
    plain.setsockopt(zmq.LINGER, 0)
    plain.setsockopt(zmq.RCVTIMEO, 5000)
    plain.connect(r.ipc)
    plain.send_multipart(encode_request("status"))
    assert json.loads(plain.recv())["ok"]
    plain.close(0)


@pytest.mark.timeout(60)
def test_bus_events_and_bound_handlers(running):
    seen = []

    def set_avatar(call):
        seen.append(call)
        if call.args.prompt == "bad":
            raise Rejection("undecodable_image", "no such avatar", "image")
        if call.args.prompt == "picky":
            raise ValueError("prompt must rhyme")  # a handler's own input check: the caller's mistake
        if call.args.prompt == "boom":
            raise RuntimeError("kaput")  # a bug
        return {"prompt": call.args.prompt, "bytes": len(call.data or b"")}

    r = running(handlers={"set_avatar": set_avatar})
    with Client(r.tcp) as c, EventStream(r.events, types=["started", "finished"]) as ev:
        ev.sync(c)
        assert "set_avatar" in c.ping()["commands"]
        rep = c.set_avatar(data=b"\x89PNG", prompt="a.png")
        assert rep == {**rep, "ok": True, "cmd": "set_avatar", "prompt": "a.png", "bytes": 4}
        assert seen[-1].peer.trusted is False and seen[-1].peer.transport == "tcp"
        with pytest.raises(Rejected) as ei:
            c.set_avatar(prompt="bad")
        assert (ei.value.code, ei.value.reason, ei.value.field) == ("undecodable_image", "no such avatar", "image")
        with pytest.raises(Rejected) as ei:
            c.set_avatar(prompt="picky")
        assert ei.value.code == "bad_request" and "rhyme" in ei.value.reason
        with pytest.raises(Rejected) as ei:
            c.set_avatar(prompt="boom")
        assert ei.value.code == "internal" and "kaput" in ei.value.reason
        assert c.ping()["pong"]
        # events published from other threads reach the PUB feed, filtered by type, in order
        t = threading.Thread(target=lambda: [r.bus.publish(k, segment_id=f"s{i}") for i in range(20)
                                             for k in ("started", "idle", "finished")])
        t.start()
        t.join()
        got = drain(ev, 40)
    assert [(e["type"], e["segment_id"]) for e in got] == [(k, f"s{i}") for i in range(20) for k in ("started", "finished")]
    assert all(a["seq"] < b["seq"] for a, b in zip(got, got[1:]))


def test_handlers_must_be_table_commands(make_settings):
    s = make_settings()
    with Spool.from_settings(s.expanded(s.queue), s.encoder, s.storage) as spool:
        with pytest.raises(ValueError, match="not in the command table"):
            IngestServer(s.expanded(s.ingest), s.encoder, spool, EventBus(), handlers={"launch": lambda call: {}})
        with pytest.raises(ValueError, match="served by the ingest server"):
            IngestServer(s.expanded(s.ingest), s.encoder, spool, EventBus(), handlers={"clear": lambda call: {}})


@pytest.mark.timeout(60)
def test_ping_lists_the_served_table_commands_and_unbound_ones_are_unavailable(running):
    r = running(handlers={"outputs": lambda call: {"outputs": []}})
    served = sorted(AUDIO_COMMANDS | {"clear", "cancel", "move", "status", "ping", "outputs"})
    with Client(r.ipc) as c:
        p = c.ping()
        assert p["commands"] == served and p["trusted"] is True
        assert c.outputs()["outputs"] == []
        with pytest.raises(Rejected) as ei:
            c.output_remove("rec")
        assert ei.value.code == "unavailable" and "outputs" in ei.value.reason
    with Client(r.tcp) as c:
        assert c.ping()["trusted"] is False


@pytest.mark.timeout(60)
def test_malformed_requests_get_bad_request_with_the_field(running):
    r = running()
    secret = "rtmp://push.example.com/live/SECRET-KEY-9"
    hdr = lambda **f: json.dumps({"v": 1, **f}).encode()  # noqa: E731
    cases = [
        ([hdr(cmd="status", colour="red")], "bad_request", "colour"),     # extra field
        ([hdr(cmd="status", note=secret)], "bad_request", "note"),        # extra field carrying a secret
        ([hdr(cmd="cancel", segment_id=17)], "bad_request", "segment_id"),  # wrong type
        ([hdr(cmd="cancel")], "bad_request", "segment_id"),               # missing
        ([hdr(cmd="ping", id=7)], "bad_request", "id"),                   # wrong type
        ([hdr(cmd="ping", id="i" * 201)], "id_too_long", "id"),           # a limit (ingest.max_id_chars)
        ([hdr(cmd="set_avatar", prompt="p" * 2001)], "prompt_too_long", "prompt"),
        ([hdr(cmd="launch")], "unknown_command", None),
        ([hdr(cmd=["ping"])], "bad_header", "cmd"),
        ([hdr(cmd="status"), b"data"], "bad_header", None),
    ]
    sock = raw_dealer(r.tcp)
    for frames, code, field in cases:
        reply = ask(sock, frames)
        assert (reply["ok"], reply["code"], reply.get("field")) == (False, code, field), (frames[0][:60], reply)
        assert "SECRET" not in json.dumps(reply) and "i" * 50 not in reply["reason"]
    assert ask(sock, [hdr(cmd="ping")])["ok"]  # and the server goes on serving
    sock.close(0)


@pytest.mark.timeout(60)
def test_trusted_commands_and_fields_are_refused_to_plain_tcp_peers(running):
    calls = []
    handlers = {"output_add": lambda call: calls.append(call.name) or {},
                "output_remove": lambda call: calls.append(call.name) or {},
                "set_avatar": lambda call: calls.append(call.name) or {}}
    r = running(handlers=handlers)
    with Client(r.tcp) as c:
        for method, args, kw, field in ((c.output_add, ("x", "/tmp/x.flv"), {}, None),
                                        (c.output_remove, ("x",), {}, None),
                                        (c.set_avatar, (), {"image": "/etc/passwd"}, "image")):
            with pytest.raises(Rejected) as ei:
                method(*args, **kw)
            assert (ei.value.code, ei.value.field) == ("unauthorized", field)
        assert c.set_avatar(data=b"\x89PNG")["ok"]  # bytes are fine from anywhere
    assert calls == ["set_avatar"]
    with Client(r.ipc) as c:  # the local socket is trusted
        c.output_add("x", "/tmp/x.flv")
        c.output_remove("x")
        c.set_avatar(image="/tmp/p.png")
    assert calls == ["set_avatar", "output_add", "output_remove", "set_avatar"]


@pytest.mark.timeout(60)
def test_stop_removes_the_socket_files(running, state_dir):
    r = running()
    files = [state_dir / "control.sock", state_dir / "events.sock"]
    assert all(f.exists() for f in files)
    r.server.stop()
    assert not any(f.exists() for f in files)


@pytest.mark.timeout(60)
def test_a_failure_after_the_commit_still_answers_with_the_committed_clip(running, clips):
    """Issue 24 item 4: everything that can fail on the caller's data runs before the commit; a failure after it (a
    daemon bug, here a broken event bus) is logged and the caller still gets its segment_id, never `internal`."""
    r = running()
    data, fields = next(iter(clips.values()))

    def broken(type: str, **fields):  # noqa: A002 - EventBus.publish's own name
        raise RuntimeError("event bus broken")

    r.server.events.publish = broken  # type: ignore[method-assign]
    with Client(r.ipc, timeout_s=5) as c:
        ack = c.enqueue(data, **fields)
        assert ack["ok"] and ack["segment_id"]
    assert [e.segment_id for e in r.spool.pending()] == [ack["segment_id"]]
