"""The ZeroMQ front door: a ROUTER that answers every request and a PUB that carries every EventBus event.

One thread owns both sockets (ZeroMQ sockets are not thread-safe). Events published from any thread are put on a
deque and the thread is woken through a pipe that the poller watches. Requests are served one at a time, in
arrival order: audio is decoded (and rejected) before anything touches the spool, and the ack is sent only after
the spool's commit.
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
from flashtalk_live.secrets import mask_obj

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
                 handlers: dict[str, Handler] | None = None, *, context: zmq.Context | None = None) -> None:
        self.settings = settings
        self.spool = spool
        self.events = events
        self.status_provider = status_provider
        self.handlers = dict(handlers or {})
        self.log = get_logger("ingest")
        self._ctx = context or zmq.Context.instance()
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
            raise
        self._router, self._pub = router, pub
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
        for sock in (self._router, self._pub):
            if sock is not None:
                sock.close(0)
        self._router = self._pub = None
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
            if self._backlog or self._wake_r in ready:
                self._flush_events()
            if self._router in ready:
                # Drain what is queued, but interleave the event flush so events stay prompt.
                for _ in range(64):
                    try:
                        frames = self._router.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._serve_one(frames)
                    if self._backlog:
                        self._flush_events()
        self._flush_events()

    def _serve_one(self, frames: list[bytes]) -> None:
        envelope, body = split_envelope(frames)
        t0 = time.perf_counter()
        request_id = None
        extra: dict[str, Any] = {}
        try:
            req = parse_request(body, extra_commands=self.handlers.keys())
            request_id = req.request_id
            reply = self._dispatch(req)
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
        self.requests_served += 1
        reply.setdefault("ms", round((time.perf_counter() - t0) * 1000, 2))
        self._reply(envelope, reply)

    def _reply(self, envelope: list[bytes], reply: dict[str, Any]) -> None:
        assert self._router is not None
        try:
            # Masked at the boundary: a handler's result or error text may quote an output URL.
            self._router.send_multipart(envelope + [encode_reply(mask_obj(reply))], flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:  # EHOSTUNREACH: the peer left (ROUTER_MANDATORY); EAGAIN: it stopped reading
            self.log.warning("reply_not_delivered", error=str(e), segment_id=reply.get("segment_id"))

    def _dispatch(self, req: Request) -> dict[str, Any]:
        cmd = req.cmd
        if req.is_audio:
            return self._audio(req)
        if cmd == "ping":
            if req.header.get("event"):
                # Lets a subscriber prove its SUB connection is live (PUB drops messages sent before it joined).
                self._publish_direct({"type": "pong", "ts": time.time(), "nonce": req.header.get("nonce")})
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

    def _publish_direct(self, event: dict[str, Any]) -> None:
        self._flush_events()  # keep bus events ahead of this one
        assert self._pub is not None
        try:
            self._pub.send_multipart(encode_event(mask_obj(event)), flags=zmq.NOBLOCK)
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
