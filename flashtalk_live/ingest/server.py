"""The ZeroMQ front door: a ROUTER that answers every request and a PUB that carries every EventBus event.

One thread owns both sockets (ZeroMQ sockets are not thread-safe). Events published from any thread are put on a
deque and the thread is woken through a pipe that the poller watches. Requests are served one at a time, in
arrival order: audio is decoded (and rejected) before anything touches the spool, and the ack is sent only after
the spool's commit.
"""

from __future__ import annotations

import collections
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import zmq
from pydantic import ValidationError

from flashtalk_live.errors import Rejection
from flashtalk_live.events import Event, EventBus
from flashtalk_live.ingest.audio import decode_for_settings
from flashtalk_live.ingest.commands import AUDIO_COMMANDS, COMMANDS, Call, Handler, Peer, authorize
from flashtalk_live.ingest.protocol import (
    PROTOCOL_VERSION,
    encode_event,
    encode_reply,
    error_reply,
    ok_reply,
    parse_request,
    rejection_reply,
    split_frames,
)
from flashtalk_live.log import get_logger
from flashtalk_live.queue.spool import Spool

EVENT_BACKLOG = 10_000
STATUS_PENDING_LIMIT = 50
TRUSTED_TRANSPORTS = frozenset({"ipc", "inproc"})  # reachable only from this machine (ipc: by file permissions)


class IngestError(RuntimeError):
    """The server could not start (e.g. an endpoint cannot be bound)."""


def expand_endpoint(settings: Any, endpoint: str) -> str:
    """Expand {state_dir} and create the directory of an ipc:// socket."""
    ep = settings.path(endpoint)
    path = ipc_path(ep)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return ep


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ipc:// endpoint (None for other transports and Linux's abstract "@name")."""
    if not endpoint.startswith("ipc://"):
        return None
    rest = endpoint[len("ipc://"):]
    return Path(rest) if rest and not rest.startswith("@") else None


def transport_of(endpoint: str) -> str:
    return endpoint.split("://", 1)[0]


def split_envelope(frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """Split a ROUTER message into (routing envelope, body) for DEALER and REQ peers.

    REQ sends [id, b"", body...]; REQ with REQ_CORRELATE sends [id, request-id (4 bytes), b"", body...];
    a DEALER sends [id, body...] or, like our client, [id, b"", body...]. A valid header is never empty nor 4 bytes.
    """
    if len(frames) >= 2 and frames[1] == b"":
        return frames[:2], frames[2:]
    if len(frames) >= 3 and len(frames[1]) == 4 and frames[2] == b"":
        return frames[:3], frames[3:]
    return frames[:1], frames[1:]


@dataclass
class Listener:
    """One ROUTER socket and the endpoints of one transport bound on it (peers of one transport share a trust)."""

    transport: str
    sock: zmq.Socket
    endpoints: list[str] = field(default_factory=list)


class IngestServer:
    """ROUTER + PUB sockets served by one thread. start() binds (raising IngestError), stop() joins and closes.

    `handlers` binds the daemon's commands ({name: fn(Call) -> dict}); the queue commands are served here. Every name
    must be in the command table; table commands without a handler answer `unavailable`.
    """

    def __init__(self, settings: Any, spool: Spool, events: EventBus,
                 status_provider: Callable[[], dict[str, Any]] | None = None,
                 handlers: Mapping[str, Handler] | None = None, *, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.spool = spool
        self.events = events
        self.status_provider = status_provider
        own: dict[str, Handler] = {name: self._cmd_audio for name in AUDIO_COMMANDS}
        own.update(clear=self._cmd_clear, cancel=self._cmd_cancel, status=self._cmd_status, ping=self._cmd_ping)
        for name in handlers or {}:
            if name not in COMMANDS:
                raise ValueError(f"handler for {name!r}, which is not in the command table (ingest/commands.py)")
            if name in own:
                raise ValueError(f"{name!r} is served by the ingest server itself")
        self.handlers: dict[str, Handler] = {**own, **(handlers or {})}
        self.served = frozenset(self.handlers)
        self.log = get_logger("ingest")
        self._ctx = context or zmq.Context.instance()
        self._backlog: collections.deque[Event] = collections.deque(maxlen=EVENT_BACKLOG)
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._listeners: list[Listener] = []
        self._pub: zmq.Socket | None = None
        self.control_endpoints: list[str] = []
        self.event_endpoints: list[str] = []
        self.requests_served = 0
        self.started_at = 0.0

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        pub = self._ctx.socket(zmq.PUB)
        listeners: list[Listener] = []
        try:
            pub.setsockopt(zmq.LINGER, 0)
            pub.setsockopt(zmq.SNDHWM, 10_000)
            by_transport: dict[str, list[str]] = {}
            for template in s.ingest.control:
                ep = expand_endpoint(s, template)
                by_transport.setdefault(transport_of(ep), []).append(ep)
            for transport, endpoints in by_transport.items():
                router = self._ctx.socket(zmq.ROUTER)
                listeners.append(Listener(transport, router))
                self.configure_router(router, transport)
                listeners[-1].endpoints = self._bind_all(router, endpoints, "ingest.control")
            self.event_endpoints = self._bind_all(pub, [expand_endpoint(s, e) for e in s.ingest.events],
                                                  "ingest.events")
        except BaseException:
            for sock in [pub] + [lst.sock for lst in listeners]:
                sock.close(0)
            raise
        self._listeners, self._pub = listeners, pub
        self.control_endpoints = [ep for lst in listeners for ep in lst.endpoints]
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._stopping.clear()
        self.events.subscribe(self._on_event)
        self.started_at = time.time()
        self._thread = threading.Thread(target=self._serve, name="ingest", daemon=True)
        self._thread.start()
        self.log.info("ingest_started", control=self.control_endpoints, events=self.event_endpoints,
                      max_message_bytes=s.ingest.max_message_bytes)

    def configure_router(self, sock: zmq.Socket, transport: str) -> None:
        """Socket options of the ROUTER for one transport, before it binds (the place for auth options)."""
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, int(self.settings.ingest.max_message_bytes))
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.RCVHWM, 100)
        sock.setsockopt(zmq.SNDHWM, 1000)

    def peer_for(self, listener: Listener, frame: zmq.Frame) -> Peer:
        """Who sent this message: local transports are trusted, the rest not (`frame` carries ZMQ metadata such
        as a CURVE peer's User-Id, for an auth layer to decide otherwise)."""
        return Peer(trusted=listener.transport in TRUSTED_TRANSPORTS, transport=listener.transport)

    def _bind_all(self, sock: zmq.Socket, endpoints: list[str], field: str) -> list[str]:
        bound = []
        for ep in endpoints:
            try:
                sock.bind(ep)
            except zmq.ZMQError as e:
                raise IngestError(f"{field}: cannot bind {ep}: {e}") from None
            # tcp://...:0 or :* picks a free port: report the real one
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT) if ep.startswith("tcp://") else ep)
        return bound

    def stop(self, timeout_s: float = 5.0) -> None:
        self.events.unsubscribe(self._on_event)
        if self._thread is None:
            return
        self._stopping.set()
        self._wake()
        self._thread.join(timeout_s)
        self._thread = None
        for sock in [lst.sock for lst in self._listeners] + [self._pub]:
            if sock is not None:
                sock.close(0)
        # libzmq unlinks ipc files from its reaper thread, which a process exiting right after may never run: give it
        # a moment (so it cannot unlink a later bind's file), then remove what is left.
        files = [p for p in map(ipc_path, self.control_endpoints + self.event_endpoints) if p is not None]
        deadline = time.monotonic() + 1.0
        while any(p.exists() for p in files) and time.monotonic() < deadline:
            time.sleep(0.01)
        for path in files:
            remove_socket_file(path)
        self._listeners, self._pub = [], None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1
        self.log.info("ingest_stopped", requests_served=self.requests_served)

    def __enter__(self) -> "IngestServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- events ------------------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        self._backlog.append(event)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (the thread will drain everything anyway) or closed

    def _flush_events(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        assert self._pub is not None
        while self._backlog:
            event = self._backlog.popleft()
            try:
                self._pub.send_multipart(encode_event(event), flags=zmq.NOBLOCK)
            except zmq.ZMQError as e:
                self.log.warning("event_not_published", type=event.get("type"), error=str(e))

    # -- serving -----------------------------------------------------------------------------------
    def _serve(self) -> None:
        poller = zmq.Poller()
        for lst in self._listeners:
            poller.register(lst.sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stopping.is_set():
            try:
                ready = dict(poller.poll(1000))
            except zmq.ZMQError as e:
                if self._stopping.is_set():
                    break
                self.log.error("ingest_poll_failed", error=str(e))
                time.sleep(0.1)
                continue
            if self._backlog or self._wake_r in ready:
                self._flush_events()
            for lst in self._listeners:
                if lst.sock not in ready:
                    continue
                # Drain what is queued, but interleave the event flush so events stay prompt.
                for _ in range(64):
                    try:
                        frames = lst.sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._serve_one(lst, frames)
                    if self._backlog:
                        self._flush_events()
        self._flush_events()

    def _serve_one(self, listener: Listener, frames: list[zmq.Frame]) -> None:
        envelope, body = split_envelope([f.bytes for f in frames])
        peer = self.peer_for(listener, frames[-1])
        try:
            header, payload = split_frames(body)
        except Rejection as e:
            reply = rejection_reply(e)
            self.log.info("request_rejected", code=e.code, reason=e.reason, frames=len(body), peer=peer.transport)
        else:
            reply = self.dispatch(peer, header, payload)
        self.requests_served += 1
        self._reply(listener.sock, envelope, reply)

    def _reply(self, sock: zmq.Socket, envelope: list[bytes], reply: dict[str, Any]) -> None:
        try:
            sock.send_multipart(envelope + [encode_reply(reply)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:  # EHOSTUNREACH: the peer left (ROUTER_MANDATORY); EAGAIN: it stopped reading
            self.log.warning("reply_not_delivered", error=str(e), segment_id=reply.get("segment_id"))

    def dispatch(self, peer: Peer, header: bytes, payload: bytes | None) -> dict[str, Any]:
        """One request to its reply: parse and validate against the command table, check the peer may call it, run
        its handler. Rejections (and a handler's ValueError) answer with their code; only a bug answers internal."""
        t0 = time.perf_counter()
        frames = [header] if payload is None else [header, payload]
        request_id = cmd = None
        try:
            req = parse_request(frames, self.served)
            request_id, cmd = req.request_id, req.cmd
            handler = self.handlers.get(req.cmd)
            if handler is None:
                raise Rejection("unavailable", f"{req.cmd} is not served here; this server has: "
                                               f"{', '.join(sorted(self.served))}")
            authorize(req.command, req.args, peer)
            result = handler(Call(peer, req.command, req.args, req.data))
            if result is None:
                result = {}
            if not isinstance(result, dict):
                raise TypeError(f"handler for {cmd!r} returned {type(result).__name__}, expected dict")
            reply = ok_reply(cmd=cmd, **{k: v for k, v in result.items() if k not in ("ok", "v", "cmd")})
        except Rejection as e:
            reply = rejection_reply(e)
        except ValidationError as e:  # a handler building a typed model (e.g. OutputSettings) from the request
            err = e.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(p) for p in err["loc"]) or None
            reply = rejection_reply(Rejection("bad_request", f"{cmd}: {where or 'request'}: {err['msg']}", where))
        except ValueError as e:  # a handler's check of the caller's input
            reply = error_reply("bad_request", f"{cmd}: {e}")
        except Exception as e:  # noqa: BLE001 - a bug in one request must not stop the front door
            reply = error_reply("internal", f"{type(e).__name__}: {e}")
            self.log.exception("request_failed", cmd=cmd)
        if not reply["ok"]:
            self.log.info("request_rejected", cmd=cmd, code=reply["code"], reason=reply["reason"],
                          field=reply.get("field"), peer=peer.transport, bytes=len(header) + len(payload or b""))
        if request_id is not None:
            reply["id"] = request_id
        reply.setdefault("ms", round((time.perf_counter() - t0) * 1000, 2))
        return reply

    # -- the commands served here ------------------------------------------------------------------
    def _cmd_ping(self, call: Call) -> dict[str, Any]:
        args = call.args
        if args.event:  # type: ignore[attr-defined]
            # Lets a subscriber prove its SUB connection is live (PUB drops messages sent before it joined).
            self._publish_direct({"type": "pong", "ts": time.time(), "nonce": args.nonce})  # type: ignore[attr-defined]
        ing = self.settings.ingest
        return {"pong": True, "protocol": PROTOCOL_VERSION, "server": "flashtalk-live",
                "max_message_bytes": ing.max_message_bytes, "max_clip_seconds": ing.max_clip_seconds,
                "min_clip_seconds": ing.min_clip_seconds, "commands": sorted(self.served),
                "trusted": call.peer.trusted}

    def _cmd_status(self, call: Call) -> dict[str, Any]:
        return self.status()

    def _cmd_clear(self, call: Call) -> dict[str, Any]:
        ids = self.spool.clear()
        for sid in ids:
            self.log.info("clip_dropped", segment_id=sid, reason="cleared")
            self.events.publish("dropped", segment_id=sid, reason="cleared")
        self.events.publish("cleared", segment_ids=ids, count=len(ids))
        return {"cleared": ids, "count": len(ids)}

    def _cmd_cancel(self, call: Call) -> dict[str, Any]:
        sid = call.args.segment_id  # type: ignore[attr-defined]
        was = self.spool.cancel(sid)
        if was is None:
            raise Rejection("not_found", f"no pending or playing clip {sid[:64]!r}", "segment_id")
        self.log.info("clip_cancelled", segment_id=sid, was=was)
        self.events.publish("cancelled", segment_id=sid, was=was)
        if was == "pending":
            self.events.publish("dropped", segment_id=sid, reason="cancelled")
        return {"segment_id": sid, "was": was}

    def _cmd_audio(self, call: Call) -> dict[str, Any]:
        data, a, mode = call.data, call.args, call.name
        assert data is not None
        rid = a.id
        if rid is not None:
            ack = self.spool.lookup_request(rid)
            if ack is not None:  # a resend after a lost reply: same answer, no second clip
                self.log.info("clip_duplicate", segment_id=ack["segment_id"], request_id=rid)
                return {"duplicate": True, **ack}
        cap = self.spool.limits.max_spool_bytes
        if len(data) > cap:  # checked before decoding: it could never be queued
            raise Rejection("oversize", f"payload of {len(data)} bytes exceeds queue.max_spool_bytes {cap}")
        fmt, rate, ch = a.format, a.sample_rate, a.channels  # type: ignore[attr-defined]
        clip = decode_for_settings(data, self.settings, format=fmt, sample_rate=rate, channels=ch)
        meta = a.meta or {}  # type: ignore[attr-defined]
        res = self.spool.add_ex(data, meta, mode, rid, clip.duration_s,  # type: ignore[arg-type]
                                format=fmt, sample_rate=rate, channels=ch)
        ack = res.ack
        if res.duplicate:
            return {"duplicate": True, **ack}
        self.log.info("clip_accepted", segment_id=ack["segment_id"], mode=mode, position=ack["position"],
                      duration_s=ack["duration_s"], source=clip.source, bytes=len(data), request_id=rid)
        self.events.publish("accepted", segment_id=ack["segment_id"], mode=mode, position=ack["position"],
                            duration_s=ack["duration_s"], request_id=rid, meta=meta)
        return {"duplicate": False, **ack}

    def _publish_direct(self, event: dict[str, Any]) -> None:
        self._flush_events()  # keep bus events ahead of this one
        assert self._pub is not None
        try:
            self._pub.send_multipart(encode_event(event), flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def status(self) -> dict[str, Any]:
        """What the status command returns: queue stats and head, plus the daemon's own status_provider()."""
        pending = self.spool.pending()
        out: dict[str, Any] = {
            "queue": self.spool.stats(),
            "playing": [{"segment_id": e.segment_id, "duration_s": e.duration_s, "mode": e.mode}
                        for e in self.spool.playing()],
            "pending": [{"segment_id": e.segment_id, "position": e.position, "duration_s": e.duration_s,
                         "mode": e.mode} for e in pending[:STATUS_PENDING_LIMIT]],
            "ingest": {"control": self.control_endpoints, "events": self.event_endpoints,
                       "requests_served": self.requests_served,
                       "max_message_bytes": self.settings.ingest.max_message_bytes},
        }
        if self.status_provider is not None:
            try:
                extra = self.status_provider() or {}
            except Exception as e:  # noqa: BLE001 - status must still answer
                extra = {"status_error": f"{type(e).__name__}: {e}"}
            out.update(extra)
        return out


def remove_socket_file(path: Path) -> None:
    """Unlink an ipc socket file this process bound (only if it is still a socket)."""
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass
