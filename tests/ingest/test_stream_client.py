"""Client.stream (flashtalk_live/client.py) against the ingest server's stream commands, in process (no sockets): a
reply lost on the way back is resent, and the resend must find the same outcome, never a refusal that makes the
client abort the clip it just closed."""

from __future__ import annotations

from typing import Any

from flashtalk_live.client import Client, ClientTimeout, Rejected
from flashtalk_live.events import EventBus
from flashtalk_live.ingest.commands import LOCAL_PEER
from flashtalk_live.ingest.protocol import decode_reply, encode_reply, encode_request
from flashtalk_live.ingest.server import IngestServer
from flashtalk_live.queue.spool import Spool
from flashtalk_live.queue.streams import StreamRegistry
from flashtalk_live.settings import Settings

from support.level_clips import level_samples as pcm


class Loopback(Client):
    """A Client whose requests go straight to `server.dispatch`; `lose` names commands whose next reply is lost
    after the daemon acted on the request (a busy daemon, or one killed before it answered)."""

    def __init__(self, server: IngestServer) -> None:
        super().__init__("ipc:///nonexistent", timeout_s=1.0)
        self.server = server
        self.lose: set[str] = set()
        self.sent: list[str] = []

    def call(self, cmd: str, data: bytes | None = None, *, timeout_s: float | None = None,
             **fields: Any) -> dict[str, Any]:
        frames = encode_request(cmd, data, **fields)
        self.sent.append(cmd)
        reply = decode_reply(encode_reply(self.server.dispatch(LOCAL_PEER, frames[0], data)))
        if cmd in self.lose:
            self.lose.discard(cmd)
            raise ClientTimeout(f"no reply to {cmd!r}")
        if not reply.get("ok"):
            raise Rejected(str(reply["code"]), str(reply.get("reason", "")), reply)
        return reply


def room(tmp_path):
    st = Settings(state_dir="/nonexistent-state")
    spool = Spool(tmp_path / "spool")
    bus = EventBus()
    seen: list[dict] = []
    bus.subscribe(seen.append)
    reg = StreamRegistry(st.streams, st.ingest, st.encoder, spool)
    srv = IngestServer(st.ingest, st.encoder, spool, bus, streams=reg)
    bus.subscribe(reg.on_event)
    return spool, reg, srv, seen


def test_a_close_whose_reply_was_lost_is_resent_and_the_clip_stays_queued(tmp_path):
    """As `push --stream` does: the pieces, then the close inside the block. The daemon closed the stream, its reply
    was lost, the resend must not turn into an error (the block would then abort the closed clip)."""
    spool, reg, srv, seen = room(tmp_path)
    client = Loopback(srv)
    with client.stream([pcm(1, 4800), pcm(2, 4800)], format="pcm_s16le", sample_rate=48000, channels=2) as s:
        s.send_all()
        client.lose.add("clip_close")
        done = s.close()
    assert done["segment_id"] == s.segment_id and done["parts"] == 2
    assert "clip_abort" not in client.sent
    assert spool.get(s.segment_id) is not None  # still queued: it airs
    assert not [e for e in seen if e["type"] in ("dropped", "cancelled")]
    assert [e["type"] for e in seen].count("stream_closed") == 1


def test_push_stream_keeps_the_clips_name(tmp_path, capsys):
    """push --stream --name: the name is stored with the clip as push's is (meta.name), not dropped."""
    import argparse

    from flashtalk_live.ingest.cli import _push_stream

    spool, reg, srv, seen = room(tmp_path)
    f = tmp_path / "a.pcm"
    f.write_bytes(pcm(1, 9600))
    args = argparse.Namespace(files=[str(f)], format=None, sample_rate=48000, channels=2, text=None, duration=None,
                              name="greeting")
    waiting: dict[str, str] = {}
    assert _push_stream(Loopback(srv), args, "enqueue", waiting) == 0
    (sid,) = waiting
    assert spool.get(sid).meta.get("name") == "greeting"
    assert next(e for e in seen if e["type"] == "accepted").get("name") == "greeting"


def test_a_stream_the_daemon_cut_for_its_idle_timeout_is_not_aborted_by_the_refused_append(tmp_path):
    """The producer went quiet past streams.idle_timeout_s: the daemon cut the stream (it airs what it received).
    The producer's next append is refused `stream_timed_out` and raises in the block; the client must not abort the
    clip then, which would drop its acknowledged audio."""
    st = Settings(state_dir="/nonexistent-state")
    spool = Spool(tmp_path / "spool")
    bus = EventBus()
    seen: list[dict] = []
    bus.subscribe(seen.append)
    now = [0.0]
    reg = StreamRegistry(st.streams, st.ingest, st.encoder, spool, clock=lambda: now[0])
    srv = IngestServer(st.ingest, st.encoder, spool, bus, streams=reg)
    bus.subscribe(reg.on_event)
    client = Loopback(srv)
    try:
        with client.stream(format="pcm_s16le", sample_rate=48000, channels=2) as s:
            s.append(pcm(1, 48000))
            now[0] += st.streams.idle_timeout_s + 1.0
            s.append(pcm(2, 4800))
    except Rejected as e:
        assert e.code == "stream_timed_out"
    else:
        raise AssertionError("the append after the idle timeout was accepted")
    assert "clip_abort" not in client.sent
    assert spool.get(s.segment_id) is not None  # cut, still queued: its second of audio airs
    assert not [e for e in seen if e["type"] in ("dropped", "cancelled")]
