"""The ZeroMQ front door: a ROUTER that answers every request and a PUB that carries every EventBus event.

One thread owns both sockets (ZeroMQ sockets are not thread-safe). Events published from any thread, and replies
computed by the worker threads, are put on deques and the thread is woken through a pipe that the poller watches.
The ingest thread identifies each request's peer (auth.py) and checks its rate (limits.py); the work runs on
`Lanes` (lanes.py): each connection's requests in arrival order, connections in parallel. Audio is decoded (and
rejected) before anything touches the spool, and the ack is sent only after the spool's commit.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, ContextManager

import zmq

from pydantic import ValidationError

from flashtalk_live.errors import Rejection
from flashtalk_live.events import Event, EventBus
from flashtalk_live.audio import decode_for_settings
from flashtalk_live.ingest.auth import EndpointRefused, Security
from flashtalk_live.ingest.conncap import ConnectionCap
from flashtalk_live.ingest.commands import AUDIO_COMMANDS, AUDIO_MODES, COMMANDS, AudioArgs, Call, CancelArgs, Handler, \
    MoveArgs, NoArgs, Peer, PingArgs, SkipArgs, authorize, check_data, lookup, validate_args
from flashtalk_live.ingest.lanes import Lanes
from flashtalk_live.ingest.limits import CUE_FIELDS, RateLimiter, check_cues, check_text
from flashtalk_live.ingest.protocol import (
    PROTOCOL_VERSION,
    encode_event,
    encode_reply,
    error_reply,
    ok_reply,
    parse_header,
    rejection_reply,
    split_frames,
)
from flashtalk_live.log import Throttle, get_logger, meta_summary
from flashtalk_live.queue.spool import Spool
from flashtalk_live.queue.streams import StreamRegistry
from flashtalk_live.secrets import mask_obj
from flashtalk_live.settings import ConfigError, EncoderSettings, IngestSettings
from flashtalk_live.statelock import FileLock, LockHeld, endpoint_busy, socket_lock_path
EVENT_BACKLOG = 10_000
# Events of the first moments after the bind are held back this long: a subscriber of the daemon's previous life
# reconnects within ZeroMQ's reconnect interval (0.1 s by default), and the start-up events (the recovered clip's
# `started`, `endpoint_up`) would otherwise go out before it is back (issue 21).
EVENTS_HOLD_S = 0.5
STATUS_PENDING_LIMIT = 50
STATUS_TEXT_CHARS = 120  # a clip's caption text in a status row is cut here (the whole text is in `accepted`)


class IngestError(RuntimeError):
    """The server could not start (e.g. an endpoint cannot be bound)."""


class IngestConfigError(IngestError, ConfigError):
    """The server could not start for a reason the operator fixes in the config (a busy ipc path or port, a
    refused bind, a missing key): `run` exits 2 with this one line."""


def prepare_endpoint(ep: str) -> str:
    """Create the directory of an ipc:// socket."""
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


def remove_socket_file(path: Path) -> None:
    """Unlink an ipc socket file this process bound (only if it is still a socket)."""
    try:
        if stat.S_ISSOCK(path.lstat().st_mode):
            path.unlink()
    except FileNotFoundError:
        pass


def _source_fd(frame: zmq.Frame) -> int | None:
    """The descriptor of the connection a message came from (libzmq's ZMQ_SRCFD), None when unknown."""
    try:
        fd = frame.get(zmq.SRCFD)
    except (zmq.ZMQError, AttributeError):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def shutdown_tcp(fd: int, ports: set[int]) -> int:
    """End one tcp connection of ours by its descriptor (shutdown(2), not close: libzmq owns the descriptor and
    closes it when its engine sees the end). Only a tcp socket on one of `ports` is touched: the descriptor may have
    been reused. 1 if it was ended."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        return 0
    try:
        if s.family in (socket.AF_INET, socket.AF_INET6) and s.getsockname()[1] in ports:
            s.shutdown(socket.SHUT_RDWR)
            return 1
    except OSError:
        pass
    finally:
        s.detach()
    return 0


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


def _label(entry: Any) -> dict[str, Any]:
    """A status row's words for people: the clip's name and the start of its caption text (when it has them)."""
    meta = entry.meta or {}
    out = {k: meta[k] for k in ("name",) if isinstance(meta.get(k), str)}
    if isinstance(meta.get("text"), str):
        text = meta["text"]
        out["text"] = text if len(text) <= STATUS_TEXT_CHARS else text[:STATUS_TEXT_CHARS - 1] + "…"
    return out


class IngestServer:
    """ROUTER + PUB sockets served by one thread. start() binds (raising IngestError), stop() joins and closes.

    `handlers` binds the daemon's commands ({name: fn(Call) -> dict}); the queue commands are served here. Every name
    must be in the command table (ingest/commands.py); table commands without a handler answer `unavailable`.
    """

    def __init__(self, ingest: IngestSettings, encoder: EncoderSettings, spool: Spool, events: EventBus,
                 status_provider: Callable[[], dict[str, Any]] | None = None,
                 handlers: dict[str, Handler] | None = None, *, context: zmq.Context | None = None,
                 refuse_clips: Callable[[], str | None] | None = None,
                 layers: Callable[[], list[str]] | None = None,
                 edit: Callable[..., ContextManager[Any]] | None = None,
                 plan_of: Callable[[str], dict[str, Any] | None] | None = None,
                 on_air: Callable[[], str | None] | None = None, lock_note: str = "",
                 check_captions: Callable[[str | None, list[dict[str, Any]]], object] | None = None,
                 streams: StreamRegistry | None = None) -> None:
        self.cfg = ingest  # {state_dir} expanded (Settings.expanded)
        self.lock_note = lock_note  # written into each ipc socket's lock: which room holds it (statelock.py)
        self._locks: list[FileLock] = []
        self.encoder = encoder
        self.layers = layers  # the overlay layers a clip's `overlays` cues may name (None: not checked)
        # edit(command, segment_id): the daemon's re-plan around a queue change (playout/replan.py), so edits act
        # on what is on air rather than on what was rendered ahead; plan_of(segment_id): its planned on-air time.
        self.edit = edit or (lambda command, segment_id=None: contextlib.nullcontext())
        self.plan_of = plan_of
        self.on_air = on_air  # the clip on air now (timeline/onair.OnAir.segment), for `skip`
        # check_captions(text, cues): raises a Rejection when a clip's captions would cost too much to render or to
        # hold until they air (the compositor's measure; None: a bare ingest server with nothing to draw them)
        self.check_captions = check_captions
        self.refuse_clips = refuse_clips  # why new clips are refused now (a full disk), or None
        self.spool = spool
        self.events = events
        self.status_provider = status_provider
        own: dict[str, Handler] = {name: self._cmd_audio for name in AUDIO_COMMANDS}
        own.update(clear=self._cmd_clear, cancel=self._cmd_cancel, move=self._cmd_move, status=self._cmd_status,
                   ping=self._cmd_ping)
        if on_air is not None:  # a bare server (no broadcast) has nothing on air to skip: `unavailable`
            own.update(skip=self._cmd_skip)
        # Streamed clips (queue/streams.py): served when the daemon gives a registry.
        self.streams = streams
        if streams is not None:
            own.update(clip_open=self._cmd_clip_open, clip_append=self._cmd_clip_append,
                       clip_close=self._cmd_clip_close, clip_abort=self._cmd_clip_abort)
            streams.on_ready = self._stream_ready
            streams.on_cut = self._stream_cut
        for name in handlers or {}:
            if name not in COMMANDS:
                raise ValueError(f"handler for {name!r}, which is not in the command table (ingest/commands.py)")
            if name in own:
                raise ValueError(f"{name!r} is served by the ingest server itself")
        self.handlers: dict[str, Handler] = {**own, **(handlers or {})}
        self.served = frozenset(self.handlers)
        self.log = get_logger("ingest")
        # A peer decides how often it is refused: those lines are counted past a few per code and interval.
        self.rejections = Throttle(self.log, ingest.log_interval_s, ingest.log_burst)
        # A private context by default: it holds this server's ZAP handler (one per context).
        self._own_ctx = context is None
        self._ctx = context or zmq.Context()
        self.security = Security(ingest)
        self.limiter = RateLimiter(ingest.rate_per_s, ingest.rate_burst)
        self._lanes: Lanes | None = None
        self._replies: collections.deque[tuple[list[bytes], dict[str, Any]]] = collections.deque()
        self._backlog: collections.deque[Event] = collections.deque(maxlen=EVENT_BACKLOG)
        self._wake_r, self._wake_w = -1, -1
        self._hold_until = 0.0  # events wait in the backlog until then (EVENTS_HOLD_S after start)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._router: zmq.Socket | None = None
        self._pub: zmq.Socket | None = None
        self._caps: list[ConnectionCap] = []
        self._curve_fds: dict[int, str] = {}  # descriptor of a control connection -> the CURVE key its requests had
        self.control_endpoints: list[str] = []
        self.event_endpoints: list[str] = []
        self.requests_served = 0
        self.started_at = 0.0

    # -- life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        i = self.cfg
        try:
            self.security.start(self._ctx)
        except EndpointRefused as e:
            raise IngestConfigError(str(e)) from None
        router = self._ctx.socket(zmq.ROUTER)
        pub = self._ctx.socket(zmq.PUB)
        try:
            for sock in (router, pub):
                sock.setsockopt(zmq.LINGER, 0)
            router.setsockopt(zmq.MAXMSGSIZE, int(i.max_message_bytes))
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.setsockopt(zmq.RCVHWM, 100)
            router.setsockopt(zmq.SNDHWM, 1000)
            pub.setsockopt(zmq.SNDHWM, 10_000)
            self.control_endpoints = self._bind_all(router, i.control, "ingest.control")
            self.event_endpoints = self._bind_all(pub, i.events, "ingest.events")
        except BaseException:
            router.close(0)
            pub.close(0)
            self.security.stop()
            self._release_locks()
            raise
        self._router, self._pub = router, pub
        # a control connection's end forgets the key its requests had: its descriptor may be reused by another's
        self._caps = [ConnectionCap(router, i.max_connections, "control", self.log,
                                    on_end=lambda fd: self._curve_fds.pop(fd, None)),
                      ConnectionCap(pub, i.max_connections, "events", self.log)]
        for cap, eps in zip(self._caps, (self.control_endpoints, self.event_endpoints)):
            for ep in eps:
                cap.watch_endpoint(ep)
        self._lanes = Lanes(i.workers, i.max_inflight_per_peer, i.max_inflight)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._stopping.clear()
        self.events.subscribe(self._on_event)
        self.started_at = time.time()
        self._hold_until = time.monotonic() + EVENTS_HOLD_S
        self._thread = threading.Thread(target=self._serve, name="ingest", daemon=True)
        self._thread.start()
        self.log.info("ingest_started", control=self.control_endpoints, events=self.event_endpoints,
                      max_message_bytes=i.max_message_bytes)

    def _lock_ipc(self, ep: str, field: str) -> None:
        """Hold `<socket>.lock` for the server's life: a live holder refuses the start (EndpointBusy: exit 2); a
        socket file nobody holds is stale and is replaced."""
        path = ipc_path(ep)
        if path is None:
            return
        lock = FileLock(socket_lock_path(path), self.lock_note)
        try:
            lock.acquire()
        except LockHeld as e:
            raise endpoint_busy(field, ep, e.holder) from None
        self._locks.append(lock)
        remove_socket_file(path)

    def _release_locks(self) -> None:
        for lock in self._locks:
            lock.release()
        self._locks = []

    def _bind_all(self, sock: zmq.Socket, endpoints: list[str], field: str) -> list[str]:
        bound = []
        for ep in endpoints:
            prepare_endpoint(ep)
            self._lock_ipc(ep, field)
            try:
                self.security.prepare_bind(sock, ep, field)
                # An ipc socket file is made with the umask's mode and given ingest.ipc_mode after the bind: until
                # then only its owner may connect (a connection made in between would outlive the chmod).
                umask = os.umask(0o077) if ep.startswith("ipc://") else None
                try:
                    sock.bind(ep)
                finally:
                    if umask is not None:
                        os.umask(umask)
                self.security.after_bind(ep)
            except zmq.ZMQError as e:
                if e.errno == errno.EADDRINUSE:
                    raise IngestConfigError(f"{field}: cannot bind {ep}: the address is in use (another room or "
                                            "program listens there); expected a free port for each room") from None
                raise IngestConfigError(f"{field}: cannot bind {ep}: {e}") from None
            except EndpointRefused as e:
                raise IngestConfigError(str(e)) from None
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
        for cap in self._caps:
            cap.close()
        self._caps = []
        self._router = self._pub = None
        self.security.stop()
        if self._own_ctx:
            self._ctx.term()
            self._ctx = zmq.Context()  # start() again gets a fresh one
        # libzmq 4.3 unlinks only the files of wildcard (ipc://*) binds, from its reaper thread. Our own context is
        # terminated above, so no libzmq thread is left that could unlink a later bind's file: remove ours now. A
        # shared context lives on: give its reaper a moment first (waiting a whole second here was most of the
        # daemon's stop time, issue 21).
        files = [p for p in map(ipc_path, self.control_endpoints + self.event_endpoints) if p is not None]
        deadline = time.monotonic() + (0.0 if self._own_ctx else 1.0)
        while any(p.exists() for p in files) and time.monotonic() < deadline:
            time.sleep(0.01)
        for path in files:
            remove_socket_file(path)
        self._release_locks()  # after the files are gone: a new holder never sees ours
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

    def _flush_events(self, hold: bool = False) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass
        assert self._pub is not None
        if hold:  # only the pongs go out now: a subscriber's sync must not wait for the hold (nor ping again)
            kept = []
            for _ in range(len(self._backlog)):  # other threads append on the right meanwhile: keep their order
                event = self._backlog.popleft()
                if event.get("type") == "pong":
                    self._send_event(event)
                else:
                    kept.append(event)
            self._backlog.extendleft(reversed(kept))
            return
        while self._backlog:
            self._send_event(self._backlog.popleft())

    def _send_event(self, event: Event) -> None:
        assert self._pub is not None
        try:
            self._pub.send_multipart(encode_event(mask_obj(event)), flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:
            self.log.warning("event_not_published", type=event.get("type"), error=str(e))

    # -- serving -----------------------------------------------------------------------------------
    def _serve(self) -> None:
        assert self._router is not None
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        for cap in self._caps:
            poller.register(cap.monitor, zmq.POLLIN)
        while not self._stopping.is_set():
            held = self._hold_until - time.monotonic()
            try:
                ready = dict(poller.poll(1000 if held <= 0 else max(1, int(held * 1000) + 1)))
            except zmq.ZMQError as e:
                if self._stopping.is_set():
                    break
                self.log.error("ingest_poll_failed", error=str(e))
                time.sleep(0.1)
                continue
            for cap in self._caps:
                if cap.monitor in ready:
                    cap.handle()
            self.rejections.flush()
            self.security.flush_logs()
            try:
                self._revoke_keys()
            except Exception as e:  # noqa: BLE001 - the key folder is the operator's: never the control plane's end
                self.log.error("key_revocation_failed", error=repr(e))
            if self._backlog or self._replies or self._wake_r in ready:
                self._flush_events(hold=time.monotonic() < self._hold_until)
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
        if peer.transport == "ipc":
            # libzmq names an ipc peer by its process (uid:gid:pid): every client of one process would share one
            # rate bucket. Each ipc connection (its routing id) is a peer of its own.
            peer = dataclasses.replace(peer, address=f"{peer.address}#{msg[0].bytes.hex()}")
        if peer.transport == "curve" and peer.key is not None:
            fd = _source_fd(msg[-1])
            if not self.security.allows(peer.key):  # revoked since its handshake: no answer, the connection ends
                self._close_fds({fd} if fd is not None else set())
                self.rejections("warning", "revoked_key_refused", "curve", key=peer.key[:8])
                return
            if fd is not None:
                self._curve_fds[fd] = peer.key
        envelope, body = split_envelope([f.bytes for f in msg])
        t0 = time.perf_counter()
        try:
            self.limiter.check(peer.name)
            header, payload = split_frames(body)
            assert self._lanes is not None
            self._lanes.submit(envelope[0], lambda: self._serve_one(envelope, peer, header, payload, t0))
        except Rejection as e:
            self.rejections("info", "request_rejected", e.code, code=e.code, reason=e.reason[:200], peer=peer.name,
                            frames=len(body))
            self._replies.append((envelope, rejection_reply(e)))
            self._flush_replies()

    def _flush_replies(self) -> None:
        while self._replies:
            envelope, reply = self._replies.popleft()
            self.requests_served += 1
            self._reply(envelope, reply)

    def _serve_one(self, envelope: list[bytes], peer: Peer, header: bytes, payload: bytes | None, t0: float) -> None:
        """On a worker thread: answer one request; the reply goes back through the ingest thread."""
        reply = self.dispatch(peer, header, payload)
        reply.setdefault("ms", round((time.perf_counter() - t0) * 1000, 2))
        self._replies.append((envelope, reply))
        self._wake()

    def _reply(self, envelope: list[bytes], reply: dict[str, Any]) -> None:
        assert self._router is not None
        try:
            # Masked at the boundary: a handler's result or error text may quote an output URL.
            self._router.send_multipart(envelope + [encode_reply(mask_obj(reply))], flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:  # EHOSTUNREACH: the peer left (ROUTER_MANDATORY); EAGAIN: it stopped reading
            self.log.warning("reply_not_delivered", error=str(e), segment_id=reply.get("segment_id"))

    def dispatch(self, peer: Peer, header: bytes, payload: bytes | None) -> dict[str, Any]:
        """One request to its reply: parse it, check it against the command table (data frame, text limits, typed
        fields), check the peer may call it, run its handler. Rejections (and a handler's ValueError) answer with
        their code and field; only a bug answers `internal`. Thread-safe: runs on the worker lanes."""
        request_id = cmd = None
        try:
            fields = parse_header(header)
            command = lookup(fields["cmd"], self.served)
            cmd = command.name
            check_data(command, payload)
            check_text(fields, self.cfg)
            args = validate_args(command, fields)
            request_id = args.id
            handler = self.handlers.get(cmd)
            if handler is None:
                raise Rejection("unavailable", f"{cmd} is not served here; this server has: "
                                               f"{', '.join(sorted(self.served))}")
            authorize(command, args, peer)
            result = handler(Call(peer, command, args, payload))
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
        except ValueError as e:  # a handler's own check of the caller's input
            reply = error_reply("bad_request", f"{cmd}: {e}")
        except Exception as e:  # noqa: BLE001 - a bug in one request must not stop the front door
            reply = error_reply("internal", f"{type(e).__name__}: {e}")
            self.log.exception("request_failed", cmd=cmd)
        if not reply["ok"]:
            self.rejections("info", "request_rejected", reply["code"], cmd=cmd, code=reply["code"],
                            reason=reply["reason"][:200], field=reply.get("field"), peer=peer.name,
                            bytes=len(header) + len(payload or b""))
        if request_id is not None:
            reply["id"] = request_id
        return reply

    # -- revocation ------------------------------------------------------------------------------------
    def reload_keys(self, keys: list[str], trusted: list[str]) -> None:
        """New client key lists from the configuration (SIGHUP; any thread): keys no longer listed are revoked on
        the ingest thread, as a certificate removed from ingest.client_keys_dir is."""
        if self.security.keys is None:
            return
        self.security.keys.reload(keys, trusted)
        self._wake()

    def _revoke_keys(self) -> None:
        """On the ingest thread, at least once a second: the keys revoked since the last look lose their open
        control connections (the descriptors their requests came from) and every tcp event subscription (the event
        endpoints are re-bound: allowed subscribers reconnect by themselves, a revoked key's handshake is refused)."""
        keys = self.security.refresh_keys()
        if not keys:
            return
        names = {k.decode("ascii"): self.security.name_of(k) for k in keys}
        fds = {fd for fd, key in self._curve_fds.items() if key in names}
        closed = self._close_fds(fds)
        self._rebind_events()
        for key, name in names.items():
            self.log.warning("key_revoked", name=name, key=key[:8], control_connections_closed=closed)
            self.events.publish("key_revoked", name=name, key=key[:8])

    def _close_fds(self, fds: set[int]) -> int:
        ports = {int(ep.rsplit(":", 1)[1]) for ep in self.control_endpoints if ep.startswith("tcp://")}
        closed = 0
        for fd in fds:
            self._curve_fds.pop(fd, None)
            closed += shutdown_tcp(fd, ports)
        return closed

    def _rebind_events(self) -> None:
        assert self._pub is not None
        for ep in self.event_endpoints:
            if not ep.startswith("tcp://"):
                continue
            try:
                self._pub.unbind(ep)
                self.security.prepare_bind(self._pub, ep, "ingest.events")
                self._pub.bind(ep)
            except zmq.ZMQError as e:
                self.log.error("events_rebind_failed", endpoint=ep, error=str(e))

    # -- the commands served here ------------------------------------------------------------------
    def _cmd_ping(self, call: Call[PingArgs]) -> dict[str, Any]:
        args = call.args
        if args.event:
            # Lets a subscriber prove its SUB connection is live (PUB drops messages sent before it joined).
            self._on_event({"type": "pong", "ts": time.time(), "nonce": args.nonce})
        ing = self.cfg
        return {"pong": True, "protocol": PROTOCOL_VERSION, "server": "flashtalk-live",
                "max_message_bytes": ing.max_message_bytes, "max_clip_seconds": ing.max_clip_seconds,
                "min_clip_seconds": ing.min_clip_seconds, "commands": sorted(self.served),
                "trusted": call.peer.trusted}

    def _cmd_status(self, call: Call[NoArgs]) -> dict[str, Any]:
        return self.status()

    def _cmd_clear(self, call: Call[NoArgs]) -> dict[str, Any]:
        with self.edit("clear"):
            ids = self.spool.clear()
        # One log line, not one per clip: 10,000 lines made `clear` of a deep queue take seconds.
        self.log.info("queue_cleared", count=len(ids), segment_ids=ids[:20])
        for sid in ids:
            self.events.publish("dropped", segment_id=sid, reason="cleared")
        self.events.publish("cleared", segment_ids=ids, count=len(ids))
        return {"cleared": ids, "count": len(ids)}

    def _cmd_cancel(self, call: Call[CancelArgs]) -> dict[str, Any]:
        sid = call.args.segment_id
        return {"segment_id": sid, "was": self.cancel_clip(sid)}

    def cancel_clip(self, sid: str, reason: str = "cancelled") -> str:
        """Drop a pending clip or cut the clip on air (re-planned first); 'pending' or 'playing'; not_found."""
        was = None
        entry = self.spool.get(sid)
        if entry is not None:  # an unknown id must not discard the render-ahead buffer
            with self.edit("cancel", sid):
                was = self.spool.cancel(sid)
        if was is None:
            raise Rejection("not_found", f"no pending or playing clip {sid[:64]!r}", "segment_id")
        self.log.info("clip_cancelled", segment_id=sid, was=was, reason=reason)
        self.events.publish("cancelled", segment_id=sid, was=was, **self._name(entry),
                            **({} if reason == "cancelled" else {"reason": reason}))
        if was == "pending":
            self.events.publish("dropped", segment_id=sid, reason=reason)
        return was

    def _cmd_skip(self, call: Call[SkipArgs]) -> dict[str, Any]:
        """Cut what is on air: a queue clip as `cancel` cuts it (dropped, never replayed), a programme item through
        the same re-plan (playout/replan.py: silenced from the next chunk to air; the programme goes on with its
        next item). With `segment_id`, only while that clip is still the one on air."""
        assert self.on_air is not None
        want = call.args.segment_id
        sid = self.on_air()
        if sid is None:
            raise Rejection("not_on_air", "nothing is on air to skip (idle, or a programme pause)",
                            "segment_id" if want else None)
        if want is not None and want != sid:
            raise Rejection("not_on_air", f"{want[:64]!r} is not on air any more (on air now: {sid[:64]!r})",
                            "segment_id")
        entry = self.spool.get(sid)
        with self.edit("cancel", sid):
            was = self.spool.cancel(sid) if entry is not None else None
        if entry is not None and was is None:  # it finished while we looked
            raise Rejection("not_on_air", f"{sid[:64]!r} finished meanwhile; nothing was skipped", "segment_id")
        source = "queue" if entry is not None else "programme"
        self.log.info("clip_skipped", segment_id=sid, source=source)
        self.events.publish("skipped", segment_id=sid, source=source, **self._name(entry))
        return {"segment_id": sid, "source": source, **self._name(entry)}

    @staticmethod
    def _name(entry: Any) -> dict[str, Any]:
        """{"name": ...} of a spool entry that has one (push --name), else nothing."""
        name = (getattr(entry, "meta", None) or {}).get("name")
        return {"name": name} if isinstance(name, str) else {}

    def _cmd_move(self, call: Call[MoveArgs]) -> dict[str, Any]:
        a = call.args
        sid = a.segment_id
        # Re-plan first (as insert does): clips rendered ahead but not on air are pending again, so they can be
        # moved and moved around; an unknown id must not discard the render-ahead buffer.
        with self.edit("move", sid) if self.spool.get(sid) is not None else contextlib.nullcontext():
            old, new = self.spool.move(sid, before=a.before, after=a.after, to=a.to)
        if old != new:
            self.log.info("clip_moved", segment_id=sid, position_was=old, position=new)
            self.events.publish("moved", segment_id=sid, position_was=old, position=new)
        return {"segment_id": sid, "position_was": old, "position": new}

    def _cmd_audio(self, call: Call[AudioArgs]) -> dict[str, Any]:
        data, a, mode = call.data, call.args, AUDIO_MODES[call.name]
        assert data is not None
        rid = a.id
        if rid is not None:
            ack = self.spool.lookup_request(rid)
            if ack is not None:  # a resend after a lost reply: same answer, no second clip
                self.log.info("clip_duplicate", segment_id=ack["segment_id"], request_id=rid)
                return {"duplicate": True, **ack}
        refusal = self.refuse_clips() if self.refuse_clips is not None else None
        if refusal is not None:
            raise Rejection("disk_full", refusal)
        cap = self.spool.limits.max_spool_bytes
        if len(data) > cap:  # checked before decoding: it could never be queued
            raise Rejection("oversize", f"payload of {len(data)} bytes exceeds queue.max_spool_bytes {cap}")
        fmt, rate, ch = a.format, a.sample_rate, a.channels
        clip = decode_for_settings(data, self.encoder, self.cfg, format=fmt, sample_rate=rate, channels=ch)
        meta = self._checked_meta(a, clip.duration_s)
        published_meta = mask_obj(meta)
        # Re-plan first: insert and play_now make clips rendered ahead but not on air pending again, so the new clip
        # is ordered against them exactly as the queue semantics say; enqueue drops buffered idle/programme chunks,
        # so a clip pushed into an idle room does not wait behind them (playout/replan.py).
        with self.edit(mode):
            res = self.spool.add_ex(data, meta, mode, rid, clip.duration_s,
                                    format=fmt, sample_rate=rate, channels=ch)
        ack = res.ack
        if res.duplicate:
            return {"duplicate": True, **ack}
        # Committed: from here the clip airs, so the caller gets its segment_id whatever fails (a daemon bug, logged).
        try:
            self.log.info("clip_accepted", segment_id=ack["segment_id"], mode=mode, position=ack["position"],
                          duration_s=ack["duration_s"], source=clip.source, bytes=len(data), request_id=rid,
                          **meta_summary(meta))
            self.events.publish("accepted", segment_id=ack["segment_id"], mode=mode, position=ack["position"],
                                duration_s=ack["duration_s"], request_id=rid, meta=published_meta, **self._name(res.entry))
        except Exception as e:  # noqa: BLE001 - never `internal` for a clip that is queued
            self.log.error("accepted_not_published", segment_id=ack["segment_id"], error=repr(e)[:200])
        return {"duplicate": False, **ack, **self._planned(ack["segment_id"])}

    def _checked_meta(self, a: AudioArgs, duration_s: float) -> dict[str, Any]:
        """The clip's meta with its name, text and cues, checked against `duration_s` before the spool (a refused
        clip leaves nothing behind): the cues, and the captions' cost (the compositor measures them). Meta's cue keys
        come only from the checked fields, so the compositor can trust them."""
        check_cues(a, duration_s, self.layers)
        meta = {k: v for k, v in (a.meta or {}).items() if k not in CUE_FIELDS}
        for key in ("text", "name"):  # checked fields win over the same keys in `meta`
            if getattr(a, key) is not None:
                meta[key] = getattr(a, key)
        for name in CUE_FIELDS:
            cues = getattr(a, name)
            if cues is not None:
                meta[name] = [c.model_dump() for c in cues]
        if self.check_captions is not None:
            self.check_captions(a.text, [c.model_dump() for c in a.captions or ()])
        return meta

    # -- streamed clips (queue/streams.py) ---------------------------------------------------------
    def _cmd_clip_open(self, call: Call) -> dict[str, Any]:
        a = call.args
        assert self.streams is not None
        rid = a.id
        if rid is not None:
            ack = self.spool.lookup_request(rid)
            if ack is not None:  # a resend after a lost reply: the same stream
                return {"duplicate": True, **ack}
        refusal = self.refuse_clips() if self.refuse_clips is not None else None
        if refusal is not None:
            raise Rejection("disk_full", refusal)
        declared = a.duration_s
        meta = self._checked_meta(a, declared if declared is not None else self.cfg.max_clip_seconds)
        mode = a.mode
        # "open" re-plans as an enqueue (whatever the mode) where a programme clip is cut to start after the air, so the
        # air holds idle (whole chunks: the bank's) while the stream gathers its first chunk instead of starting an
        # item it would then wait behind; buffered idle stays for the ready re-plan to split (queue clips keep their
        # places; insert and play_now act when it can start: _stream_ready).
        with self.edit("open"):
            res = self.streams.open(meta, mode, rid, format=a.format, sample_rate=a.sample_rate,
                                    channels=a.channels, declared_s=declared, peer=call.peer.name)
        ack = res.ack
        if res.duplicate:
            return {"duplicate": True, **ack}
        self.log.info("clip_accepted", segment_id=ack["segment_id"], mode=mode, position=ack["position"],
                      stream=True, declared_s=declared, request_id=rid)
        self.events.publish("accepted", segment_id=ack["segment_id"], mode=mode, position=ack["position"],
                            duration_s=declared or 0.0, request_id=rid, meta=meta, stream=True,
                            **self._name(res.entry))
        return {"duplicate": False, **ack, "stream": True}

    def _cmd_clip_append(self, call: Call) -> dict[str, Any]:
        assert self.streams is not None and call.data is not None
        a = call.args
        if self.refuse_clips is not None and (refusal := self.refuse_clips()) is not None:
            raise Rejection("disk_full", refusal)
        return self.streams.append(a.segment_id, a.seq, call.data)

    def _cmd_clip_close(self, call: Call) -> dict[str, Any]:
        assert self.streams is not None
        a = call.args
        res = self.streams.close(a.segment_id, a.duration_s)
        if not res["duplicate"]:  # a resent close (its first reply was lost) closed nothing again
            self.events.publish("stream_closed", **{k: v for k, v in res.items() if k != "duplicate"})
        return {**res, **self._planned(a.segment_id)}

    def _cmd_clip_abort(self, call: Call) -> dict[str, Any]:
        assert self.streams is not None
        sid = call.args.segment_id
        try:
            self.streams.abort(sid)
        except Rejection as e:
            if e.code == "unknown_stream":
                raise
            # closed or cut already: what it received is queued or on air, and the abort drops that
        try:
            was = self.cancel_clip(sid, reason="aborted")
        except Rejection:
            was = None  # it had already left the queue
        return {"segment_id": sid, "was": was}

    def _stream_ready(self, segment_id: str, mode: str) -> None:
        """A stream holds enough audio to start: re-plan as for a whole clip pushed now, so it does not wait behind
        buffered idle (insert/play_now keep their meaning: the spool's order and interrupt flag were set at open)."""
        with self.edit(mode, segment_id):
            pass
        self._planned(segment_id)

    def _stream_cut(self, segment_id: str, had_audio: bool) -> None:
        """The idle timeout closed a stream: with audio it airs to its end and then `interrupted` (the timeline's
        mark); with none it left the queue now, and this is its event."""
        self.events.publish("stream_closed", segment_id=segment_id, cut=True, reason="stream_timeout")
        if not had_audio:
            self.events.publish("interrupted", segment_id=segment_id, source="queue", reason="stream_timeout",
                                was="pending")

    def _planned(self, segment_id: str) -> dict[str, Any]:
        """planned_in_s / planned_media_time_s for a reply (nothing without a daemon, or if the plan fails)."""
        if self.plan_of is None:
            return {}
        try:
            p = self.plan_of(segment_id)
        except Exception as e:  # noqa: BLE001 - an estimate must never fail an accepted clip's reply
            self.log.error("plan_failed", error=repr(e))
            return {}
        return {k: p[k] for k in ("planned_in_s", "planned_media_time_s")} if p else {}

    def status(self) -> dict[str, Any]:
        """What the status command returns: queue stats and head, plus the daemon's own status_provider()."""
        playing, pending = self.spool.view(limit=STATUS_PENDING_LIMIT)
        out: dict[str, Any] = {
            "queue": self.spool.stats(),
            "streams": self.streams.status() if self.streams is not None else None,
            "playing": [{"segment_id": e.segment_id, "duration_s": e.duration_s, "mode": e.mode, **_label(e)}
                        for e in playing],
            "pending": [{"segment_id": e.segment_id, "position": e.position, "duration_s": e.duration_s,
                         "mode": e.mode, **_label(e)} for e in pending],
            "ingest": {"control": self.control_endpoints, "events": self.event_endpoints,
                       "requests_served": self.requests_served,
                       "connections": {c.name: c.status() for c in self._caps},
                       "max_message_bytes": self.cfg.max_message_bytes},
        }
        if self.status_provider is not None:
            try:
                extra = self.status_provider() or {}
            except Exception as e:  # noqa: BLE001 - status must still answer
                extra = {"status_error": f"{type(e).__name__}: {e}"}
            out.update(extra)
        return out
