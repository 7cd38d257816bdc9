"""The ZeroMQ front door: a ROUTER that answers every request and a PUB that carries every EventBus event.

One thread owns both sockets (ZeroMQ sockets are not thread-safe). Events published from any thread, and replies
computed by the worker threads, are put on deques and the thread is woken through a pipe that the poller watches.
The ingest thread identifies each request's peer (auth.py) and checks its rate (limits.py); the work runs on
`Lanes` (lanes.py): each connection's requests in arrival order, connections in parallel. Audio is decoded (and
rejected) before anything touches the spool, and the ack is sent only after the spool's commit.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import zmq

from flashtalk_live.events import Event, EventBus
from flashtalk_live.ingest.audio import AudioError, decode_for_settings
from flashtalk_live.ingest.auth import EndpointRefused, Peer, Security, authorize
from flashtalk_live.ingest.lanes import Lanes
from flashtalk_live.ingest.limits import RateLimiter, check_text
from flashtalk_live.ingest.protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    Request,
    encode_event,
    encode_reply,
    error_reply,
    ok_reply,
    parse_request,
)
from flashtalk_live.log import get_logger
from flashtalk_live.queue.spool import Spool, SpoolError

Handler = Callable[[dict[str, Any]], dict[str, Any]]
EVENT_BACKLOG = 10_000
STATUS_PENDING_LIMIT = 50


class IngestError(RuntimeError):
    """The server could not start (e.g. an endpoint cannot be bound)."""


def expand_endpoint(settings: Any, endpoint: str) -> str:
    """Expand {state_dir} and create the directory of an ipc:// socket."""
    ep = settings.path(endpoint)
    if ep.startswith("ipc://"):
        path = Path(ep[len("ipc://"):])
        if str(path) and not str(path).startswith("@"):  # "@name" is Linux's abstract namespace
            path.parent.mkdir(parents=True, exist_ok=True)
    return ep


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


class IngestServer:
    """ROUTER + PUB sockets served by one thread. start() binds (raising IngestError), stop() joins and closes."""

    def __init__(self, settings: Any, spool: Spool, events: EventBus,
                 status_provider: Callable[[], dict[str, Any]] | None = None,
                 handlers: dict[str, Handler] | None = None, *, context: zmq.Context | None = None,
                 refuse_clips: Callable[[], str | None] | None = None) -> None:
        self.settings = settings
        self.refuse_clips = refuse_clips  # why new clips are refused now (a full disk), or None
        self.spool = spool
        self.events = events
        self.status_provider = status_provider
        self.handlers = dict(handlers or {})
        self.log = get_logger("ingest")
        # A private context by default: it holds this server's ZAP handler (one per context).
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self.security = Security(settings.ingest, settings.path)
        self.limiter = RateLimiter(settings.ingest.rate_per_s, settings.ingest.rate_burst)
        self._lanes: Lanes | None = None
        self._replies: collections.deque[tuple[list[bytes], dict[str, Any]]] = collections.deque()
        self._backlog: collections.deque[Event] = collections.deque(maxlen=EVENT_BACKLOG)
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._router: zmq.Socket | None = None
        self._pub: zmq.Socket | None = None
        self.control_endpoints: list[str] = []
        self.event_endpoints: list[str] = []
        self.requests_served = 0
        self.started_at = 0.0

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        s = self.settings
        try:
            self.security.start(self._ctx)
        except EndpointRefused as e:
            raise IngestError(str(e)) from None
        router = self._ctx.socket(zmq.ROUTER)
        pub = self._ctx.socket(zmq.PUB)
        try:
            for sock in (router, pub):
                sock.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.MAXMSGSIZE, int(s.ingest.max_message_bytes))
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.setsockopt(zmq.RCVHWM, 100)
            router.setsockopt(zmq.SNDHWM, 1000)
            pub.setsockopt(zmq.SNDHWM, 10_000)
            self.control_endpoints = self._bind_all(router, s.ingest.control, "ingest.control")
            self.event_endpoints = self._bind_all(pub, s.ingest.events, "ingest.events")
        except BaseException:
            router.close(0)
            pub.close(0)
            self.security.stop()
            raise
        self._router, self._pub = router, pub
        i = s.ingest
        self._lanes = Lanes(i.workers, i.max_inflight_per_peer, i.max_inflight)
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

    def _bind_all(self, sock: zmq.Socket, endpoints: list[str], field: str) -> list[str]:
        bound = []
        for template in endpoints:
            ep = expand_endpoint(self.settings, template)
            try:
                self.security.prepare_bind(sock, ep, field)
                sock.bind(ep)
                self.security.after_bind(ep)
            except zmq.ZMQError as e:
                raise IngestError(f"{field}: cannot bind {ep}: {e}") from None
            except EndpointRefused as e:
                raise IngestError(str(e)) from None
            # tcp://...:0 or :* picks a free port: report the real one
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT) if ep.startswith("tcp://") else ep)
        return bound

    def stop(self, timeout_s: float = 5.0) -> None:
        self.events.unsubscribe(self._on_event)
        if self._thread is None:
            return
        if self._lanes is not None:
            self._lanes.close()
        self._stopping.set()
        self._wake()
        self._thread.join(timeout_s)
        self._thread = None
        for sock in (self._router, self._pub):
            if sock is not None:
                sock.close(0)
        self._router = self._pub = None
        self.security.stop()
        if self._own_ctx:
            self._ctx.term()
            self._ctx = zmq.Context()  # start() again gets a fresh one
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
        assert self._router is not None
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
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
            if self._backlog or self._replies or self._wake_r in ready:
                self._flush_events()
                self._flush_replies()
            if self._router in ready:
                for _ in range(64):
                    try:
                        msg = self._router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._accept(msg)
        self._flush_events()
        self._flush_replies()

    def _accept(self, msg: list[zmq.Frame]) -> None:
        """On the ingest thread: name the peer, check its rate, and queue the request on its connection's lane."""
        peer = self.security.peer_of(msg[-1])
        envelope, body = split_envelope([f.bytes for f in msg])
        t0 = time.perf_counter()
        try:
            self.limiter.check(peer.name)
            assert self._lanes is not None
            self._lanes.submit(envelope[0], lambda: self._serve_one(envelope, body, peer, t0))
        except ProtocolError as e:
            self.log.info("request_rejected", code=e.code, reason=e.reason, peer=peer.name)
            self._replies.append((envelope, error_reply(e.code, e.reason)))
            self._flush_replies()

    def _flush_replies(self) -> None:
        while self._replies:
            envelope, reply = self._replies.popleft()
            self.requests_served += 1
            self._reply(envelope, reply)

    def _serve_one(self, envelope: list[bytes], body: list[bytes], peer: Peer, t0: float) -> None:
        """On a worker thread: answer one request; the reply goes back through the ingest thread."""
        request_id = None
        extra: dict[str, Any] = {}
        try:
            req = parse_request(body, extra_commands=self.handlers.keys())
            request_id = req.request_id
            reply = self._dispatch(req, peer)
        except ProtocolError as e:
            reply = error_reply(e.code, e.reason)
            self.log.info("request_rejected", code=e.code, reason=e.reason, frames=len(body),
                          bytes=sum(len(f) for f in body))
        except Exception as e:  # noqa: BLE001 - a bug in one request must not stop the front door
            reply = error_reply("internal", f"{type(e).__name__}: {e}")
            self.log.exception("request_failed")
        if request_id is not None:
            extra["id"] = request_id
        reply = {**reply, **extra}
        reply.setdefault("ms", round((time.perf_counter() - t0) * 1000, 2))
        self._replies.append((envelope, reply))
        self._wake()

    def _reply(self, envelope: list[bytes], reply: dict[str, Any]) -> None:
        assert self._router is not None
        try:
            self._router.send_multipart(envelope + [encode_reply(reply)], flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:  # EHOSTUNREACH: the peer left (ROUTER_MANDATORY); EAGAIN: it stopped reading
            self.log.warning("reply_not_delivered", error=str(e), segment_id=reply.get("segment_id"))

    def _dispatch(self, req: Request, peer: Peer) -> dict[str, Any]:
        cmd = req.cmd
        check_text(req.header, self.settings.ingest)
        authorize(cmd, req.header, peer)
        if req.is_audio:
            return self._audio(req)
        if cmd == "ping":
            if req.header.get("event"):
                # Lets a subscriber prove its SUB connection is live (PUB drops messages sent before it joined).
                self._on_event({"type": "pong", "ts": time.time(), "nonce": req.header.get("nonce")})  # type: ignore[arg-type]
            return ok_reply(cmd="ping", pong=True, protocol=PROTOCOL_VERSION, server="flashtalk-live",
                            max_message_bytes=self.settings.ingest.max_message_bytes,
                            max_clip_seconds=self.settings.ingest.max_clip_seconds,
                            min_clip_seconds=self.settings.ingest.min_clip_seconds,
                            commands=sorted({"enqueue", "insert", "play_now", "clear", "cancel", "status", "ping"}
                                            | set(self.handlers)))
        if cmd == "status":
            return ok_reply(cmd="status", **self.status())
        if cmd == "clear":
            ids = self.spool.clear()
            for sid in ids:
                self.log.info("clip_dropped", segment_id=sid, reason="cleared")
                self.events.publish("dropped", segment_id=sid, reason="cleared")
            self.events.publish("cleared", segment_ids=ids, count=len(ids))
            return ok_reply(cmd="clear", cleared=ids, count=len(ids))
        if cmd == "cancel":
            sid = req.header["segment_id"]
            was = self.spool.cancel(sid)
            if was is None:
                raise ProtocolError("not_found", f"no pending or playing clip {sid[:64]!r}")
            self.log.info("clip_cancelled", segment_id=sid, was=was)
            self.events.publish("cancelled", segment_id=sid, was=was)
            if was == "pending":
                self.events.publish("dropped", segment_id=sid, reason="cancelled")
            return ok_reply(cmd="cancel", segment_id=sid, was=was)
        handler = self.handlers[cmd]
        args = dict(req.header)
        args["_payload"] = req.data
        result = handler(args)
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise TypeError(f"handler for {cmd!r} returned {type(result).__name__}, expected dict")
        if result.get("ok") is False:
            return error_reply(str(result.get("code", "internal")), str(result.get("reason", "")),
                               **{k: v for k, v in result.items() if k not in ("ok", "code", "reason", "v")})
        return ok_reply(cmd=cmd, **{k: v for k, v in result.items() if k not in ("ok", "v")})

    def _audio(self, req: Request) -> dict[str, Any]:
        assert req.data is not None
        if req.request_id is not None:
            ack = self.spool.lookup_request(req.request_id)
            if ack is not None:  # a resend after a lost reply: same answer, no second clip
                self.log.info("clip_duplicate", segment_id=ack["segment_id"], request_id=req.request_id)
                return ok_reply(cmd=req.cmd, duplicate=True, **ack)
        refusal = self.refuse_clips() if self.refuse_clips is not None else None
        if refusal is not None:
            raise ProtocolError("disk_full", refusal)
        cap = self.spool.limits.max_spool_bytes
        if len(req.data) > cap:  # checked before decoding: it could never be queued
            raise ProtocolError("oversize", f"payload of {len(req.data)} bytes exceeds queue.max_spool_bytes {cap}")
        try:
            clip = decode_for_settings(req.data, self.settings, format=req.format,
                                       sample_rate=req.sample_rate, channels=req.channels)
        except AudioError as e:
            raise ProtocolError(e.code, e.reason) from None
        meta = req.header.get("meta") or {}
        try:
            res = self.spool.add_ex(req.data, meta, req.cmd, req.request_id, clip.duration_s,  # type: ignore[arg-type]
                                    format=req.format, sample_rate=req.sample_rate, channels=req.channels)
        except SpoolError as e:
            raise ProtocolError(e.code, e.reason) from None
        ack = res.ack
        if res.duplicate:
            return ok_reply(cmd=req.cmd, duplicate=True, **ack)
        self.log.info("clip_accepted", segment_id=ack["segment_id"], mode=req.cmd, position=ack["position"],
                      duration_s=ack["duration_s"], source=clip.source, bytes=len(req.data), request_id=req.request_id)
        self.events.publish("accepted", segment_id=ack["segment_id"], mode=req.cmd, position=ack["position"],
                            duration_s=ack["duration_s"], request_id=req.request_id, meta=meta)
        return ok_reply(cmd=req.cmd, duplicate=False, **ack)

    def status(self) -> dict[str, Any]:
        """What the status command returns: queue stats and head, plus the daemon's own status_provider()."""
        pending = self.spool.pending(limit=STATUS_PENDING_LIMIT)
        out: dict[str, Any] = {
            "queue": self.spool.stats(),
            "playing": [{"segment_id": e.segment_id, "duration_s": e.duration_s, "mode": e.mode}
                        for e in self.spool.playing()],
            "pending": [{"segment_id": e.segment_id, "position": e.position, "duration_s": e.duration_s,
                         "mode": e.mode} for e in pending],
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
