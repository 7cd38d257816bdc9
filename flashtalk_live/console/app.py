"""The console's WSGI app: the page, the JSON API (with the live event stream and the health history), the preview,
/metrics (the Prometheus app, mounted as is) and the health probes (probes.py: /livez, /readyz, /startupz).

Every command goes through the ingest server's `dispatch` (the command table, its typed fields, the peer's trust and
the rate limit), as a ZeroMQ request would: a caller with the console token is a trusted peer ("http" transport).
Every state-changing request (any POST) needs the token; reads do not. Replies are masked like the ZeroMQ replies.
"""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from importlib import resources
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs

import numpy as np

from flashtalk_live.console.auth import bearer_ok
from flashtalk_live.console.feed import EventFeed
from flashtalk_live.console.health import HealthHistory, gpu_memory
from flashtalk_live.console.preview import AirTap, PreviewEncoder, pcm16, wav_header
from flashtalk_live.console.server import READ_DONE
from flashtalk_live.errors import Rejection
from flashtalk_live.events import EventBus
from flashtalk_live.ingest.commands import Peer
from flashtalk_live.probes import RoomProbes
from flashtalk_live.secrets import mask_obj
from flashtalk_live.ingest.server import IngestServer
from flashtalk_live.log import get_logger
from flashtalk_live.settings import ConsoleSettings, is_loopback_host

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

# Rejection code -> HTTP status; any code not listed is a client mistake: 400.
HTTP_STATUS: dict[str, int] = {
    "unauthorized": 403, "forbidden_path": 403,
    "not_found": 404, "unknown_command": 404, "not_on_air": 409,
    "already_exists": 409, "queue_full": 409, "too_many_outputs": 409, "not_pending": 409,
    "oversize": 413, "image_too_large": 413,
    "rate_limited": 429,
    "internal": 500, "unavailable": 501, "busy": 503, "disk_full": 507,
}
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 411: "Length Required", 413: "Content Too Large",
           429: "Too Many Requests", 500: "Internal Server Error", 501: "Not Implemented",
           503: "Service Unavailable", 507: "Insufficient Storage"}
STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
SECURITY_HEADERS = [
    ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
]
BOUNDARY = "flashtalkframe"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


STATIC_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}\.[a-z]{1,8}")


class Budget:
    """Requests of one kind answered at once: `cap`, plus `reserved` slots only a request with the token takes."""

    def __init__(self, name: str, cap: int, setting: str, reserved: int = 0) -> None:
        self.name, self.cap, self.setting, self.reserved = name, int(cap), setting, int(reserved)
        self._lock = threading.Lock()
        self.busy = 0
        self.refused = 0

    def enter(self, operator: bool) -> bool:
        with self._lock:
            if self.busy < self.cap or (operator and self.busy < self.cap + self.reserved):
                self.busy += 1
                return True
            self.refused += 1
            return False

    def leave(self) -> None:
        with self._lock:
            self.busy -= 1


class _Released:
    """A WSGI body that gives its budget slot back when the server closes it (after the last byte, or on error)."""

    def __init__(self, body: Iterable[bytes], release: Callable[[], None]) -> None:
        self.body, self._release, self._done = body, release, False

    def __iter__(self):  # noqa: ANN204
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            if not self._done:
                self._done = True
                self._release()


def _read_done(environ: dict[str, Any]) -> None:
    """The request has arrived whole: its read deadline (console/server.py) no longer applies."""
    fn = environ.get(READ_DONE)
    if fn is not None:
        fn()


def _host_name(host_header: str) -> str:
    """The host part of a Host header ("[::1]:9464" -> "::1", "localhost:80" -> "localhost")."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _loopback_name(name: str) -> bool:
    """A Host name of this machine: localhost, or a loopback address literal (127.0.0.2 for a bind to it); never a
    DNS name, which a rebinding page controls."""
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Console:
    """The app. `ingest` is the daemon's IngestServer (dispatch, status, limiter); `metrics_app` serves /metrics."""

    def __init__(self, c: ConsoleSettings, metrics_host: str, ingest: IngestServer, events: EventBus, tap: AirTap,
                 token: str, metrics_app: WsgiApp | None = None, probes: RoomProbes | None = None) -> None:
        self.ingest = ingest
        self.probes = probes
        self.token = token
        self.metrics_app = metrics_app
        self.tap = tap
        self.preview = PreviewEncoder(tap, c.preview_fps, c.preview_width)
        self.events = EventFeed(events, c.event_history, c.event_stream_clients)
        self.health = HealthHistory(ingest.status, events, c.health_interval_s, c.health_history_s)
        self.max_body = ingest.cfg.max_message_bytes
        # A loopback bind only answers Host names of this machine: a DNS-rebinding page cannot read the API.
        self.check_host = is_loopback_host(metrics_host)
        self.closed = threading.Event()
        self.log = get_logger("console")
        # Separate budgets, so a crowd at one door does not lock the others: probes, preview, the event stream
        # (capped by its own feed, console.event_stream_clients), the page and API (one slot kept for the token).
        self.budgets = {"probe": Budget("probe", c.probe_connections, "probe_connections"),
                        "preview": Budget("preview", c.preview_clients, "preview_clients"),
                        "stream": Budget("event stream", c.event_stream_clients, "event_stream_clients"),
                        "api": Budget("API", c.api_connections, "api_connections", reserved=1)}
        self.routes: dict[tuple[str, str], Callable[[dict[str, Any]], tuple[int, list, Iterable[bytes]]]] = {
            ("GET", "/"): lambda env: self._static("index.html"),
            ("GET", "/api/status"): lambda env: self._json(200, self.status()),
            ("GET", "/api/queue"): lambda env: self._json(200, self.queue()),
            ("GET", "/api/outputs"): self._outputs,
            ("GET", "/api/events"): self._events,
            ("GET", "/api/events/stream"): self._event_stream,
            ("GET", "/api/health"): self._health,
            ("GET", "/preview.jpg"): self._preview_jpg,
            ("GET", "/preview.mjpeg"): self._preview_mjpeg,
            ("GET", "/preview.wav"): self._preview_wav,
        }

    def close(self) -> None:
        self.closed.set()
        self.events.close()
        self.health.close()

    # -- WSGI ----------------------------------------------------------------------------------------
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
        if not (method == "POST" and path.startswith("/api/commands/")):
            _read_done(environ)  # no body to wait for: the read deadline is met
        # Probes come before the budgets and the Host check: a crowd on /metrics or /api/health must not turn a
        # kubelet's probe into a 503 (a restart of a healthy room); a verdict is computed without a lock or a wait.
        # A kubelet names the pod's address, and they hold nothing secret.
        answer = self.probes.answer(path) if self.probes is not None and method in ("GET", "HEAD") else None
        if answer is not None:
            code, verdict = answer
            start_response(f"{code} {REASONS.get(code, 'Error')}",
                           [("Content-Type", "application/json"), ("Content-Length", str(len(verdict))),
                            ("Cache-Control", "no-store")])
            return [verdict] if method == "GET" else []
        budget = self._budget_of(path)
        if not budget.enter(bearer_ok(environ, self.token)):
            status, headers, body = self._error(503, "busy", f"{budget.cap} {budget.name} requests are being "
                                                f"answered (console.{budget.setting}); retry",
                                                extra=[("Retry-After", "1")])
            start_response(f"{status} {REASONS[status]}", headers + SECURITY_HEADERS)
            return body
        try:
            if path == "/metrics" and self.metrics_app is not None:
                return _Released(self.metrics_app(environ, start_response), budget.leave)
            if self.check_host and not _loopback_name(_host_name(environ.get("HTTP_HOST", "localhost"))):
                status, headers, body = self._error(403, "forbidden_host", "this console answers loopback names only")
            else:
                try:
                    status, headers, body = self._route(method, path, environ)
                except Exception as e:  # noqa: BLE001 - a bug in one request must not stop the console
                    # the type only: a message may quote a path of the install
                    status, headers, body = self._error(500, "internal", f"{type(e).__name__} (a bug; see the log)")
                    self.log.exception("console_request_failed", path=path[:80])
            start_response(f"{status} {REASONS.get(status, 'Error')}", headers + SECURITY_HEADERS)
            return _Released(body, budget.leave)
        except BaseException:
            budget.leave()
            raise

    def _budget_of(self, path: str) -> "Budget":
        """Which connection budget answers `path`: probes, the preview, or the page and the API (the event stream
        has its own cap, console.event_stream_clients, inside the API's budget only while it is being opened)."""
        if path in ("/metrics", "/api/health"):
            return self.budgets["probe"]
        if path in ("/preview.jpg", "/preview.mjpeg", "/preview.wav"):
            return self.budgets["preview"]
        if path == "/api/events/stream":
            return self.budgets["stream"]
        return self.budgets["api"]

    def _route(self, method: str, path: str, environ: dict[str, Any]) -> tuple[int, list, Iterable[bytes]]:
        if path.startswith("/api/commands/"):
            if method != "POST":
                return self._error(405, "bad_request", "commands are POST requests")
            return self._command(path[len("/api/commands/"):], environ)
        if method == "GET" and path.startswith("/static/"):
            return self._static(path[len("/static/"):])
        handler = self.routes.get((method, path))
        if handler is None:
            if any(p == path for _, p in self.routes):
                return self._error(405, "bad_request", f"{method} is not served on {path}")
            return self._error(404, "not_found", f"no page {path[:80]!r}")
        return handler(environ)

    # -- replies -------------------------------------------------------------------------------------
    @staticmethod
    def _json(status: int, obj: Any, extra: list | None = None) -> tuple[int, list, Iterable[bytes]]:
        body = json.dumps(mask_obj(obj), default=str).encode()
        return status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))] + (extra or []), [body]

    def _error(self, status: int, code: str, reason: str, field: str | None = None,
               extra: list | None = None) -> tuple[int, list, Iterable[bytes]]:
        out: dict[str, Any] = {"ok": False, "code": code, "reason": reason}
        if field is not None:
            out["field"] = field
        return self._json(status, out, extra)

    def _static(self, name: str) -> tuple[int, list, Iterable[bytes]]:
        # A name is letters, digits, '_', '-' and one '.': a NUL, a slash, 5,000 characters are 404, never a 500
        # and never a path in the answer.
        ctype = STATIC_TYPES.get(name[name.rfind("."):] if "." in name else "")
        if ctype is None or not STATIC_NAME.fullmatch(name):
            return self._error(404, "not_found", "no such asset")
        try:
            body = resources.files("flashtalk_live.console").joinpath("static", name).read_bytes()
        except (OSError, ValueError):
            return self._error(404, "not_found", "no such asset")
        return 200, [("Content-Type", ctype), ("Content-Length", str(len(body)))], [body]

    # -- the API ---------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The `status` command's reply, plus the aired audio levels, the preview's counters and a plan: the clip
        on air with its progress and each pending clip's estimated start (seconds from now)."""
        st = self.ingest.status()
        st["audio_levels"] = self.tap.audio_levels()
        st["preview"] = {**self.preview.stats(), "listeners": self.tap.listeners, "audio_gaps": self.tap.audio_gaps}
        st["event_streams"] = {"open": self.events.open_streams, "max": self.events.max_streams,
                               "lost": self.events.streams_lost}
        gpus = gpu_memory()
        if gpus is not None:
            st["gpu"] = gpus
        st["plan"] = self._plan(st)
        return st

    def _plan(self, st: dict[str, Any]) -> dict[str, Any]:
        now_media = float(st.get("broadcast", {}).get("media_time_s", 0.0))
        on_air = st.get("on_air")
        cur: dict[str, Any] | None = None
        left = 0.0
        if on_air:
            started = next((e for e in reversed(self.events.since()) if e.get("type") == "started"
                            and e.get("segment_id") == on_air), None)
            dur = next((p.get("duration_s") for p in st.get("playing", []) if p.get("segment_id") == on_air), None)
            elapsed = now_media - float(started["media_time_s"]) if started else None
            name = next((p.get("name") for p in st.get("playing", []) if p.get("segment_id") == on_air), None)
            cur = {"segment_id": on_air, "source": started.get("source") if started else None,
                   "name": name or (started.get("name") if started else None),
                   "elapsed_s": round(elapsed, 2) if elapsed is not None else None, "duration_s": dur}
            if dur and elapsed is not None:
                cur["progress"] = round(min(1.0, max(0.0, elapsed / dur)), 3)
                left = max(0.0, dur - elapsed)
        upcoming = []
        for p in st.get("pending", []):
            upcoming.append({**p, "starts_in_s": round(left, 2)})
            left += float(p.get("duration_s") or 0.0)
        return {"media_time_s": now_media, "on_air": cur, "pending": upcoming, "estimate": True}

    def queue(self) -> dict[str, Any]:
        st = self.ingest.status()
        plan = self._plan(st)
        return {"queue": st.get("queue"), "playing": st.get("playing"), "on_air": plan["on_air"],
                "pending": plan["pending"]}

    def _outputs(self, environ: dict[str, Any]) -> tuple[int, list, Iterable[bytes]]:
        reply = self.ingest.dispatch(self._peer(environ, trusted=False), b'{"v": 1, "cmd": "outputs"}', None)
        return self._reply(reply)

    def _events(self, environ: dict[str, Any]) -> tuple[int, list, Iterable[bytes]]:
        q = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            after = int(q.get("after", ["0"])[0])
        except ValueError:
            return self._error(400, "bad_request", "after: not an integer", "after")
        events = self.events.since(after)
        return self._json(200, {"events": events, "last_seq": events[-1]["seq"] if events else after})

    def _event_stream(self, environ: dict[str, Any]) -> tuple[int, list, Iterable[bytes]]:
        """Server-sent events: the ring's events after Last-Event-ID (a reconnect) or ?after=, then live ones."""
        raw = environ.get("HTTP_LAST_EVENT_ID") or parse_qs(environ.get("QUERY_STRING", "")).get("after", ["0"])[0]
        try:
            after = int(raw)
        except ValueError:
            return self._error(400, "bad_request", "after / Last-Event-ID: not an integer", "after")
        body = self.events.open(after, self.closed)
        if body is None:
            return self._error(503, "busy", f"{self.events.max_streams} event streams are open "
                                            f"(console.event_stream_clients); poll GET /api/events?after=SEQ instead",
                               extra=[("Retry-After", "10")])
        return 200, [("Content-Type", "text/event-stream; charset=utf-8"), ("X-Accel-Buffering", "no")], body

    def _health(self, environ: dict[str, Any]) -> tuple[int, list, Iterable[bytes]]:
        try:
            since = float(parse_qs(environ.get("QUERY_STRING", "")).get("since", ["0"])[0])
        except ValueError:
            return self._error(400, "bad_request", "since: not a number", "since")
        return self._json(200, self.health.snapshot(since))

    def _peer(self, environ: dict[str, Any], trusted: bool) -> Peer:
        return Peer(transport="http", key=None, address=str(environ.get("REMOTE_ADDR", "")), trusted=trusted)

    def _reply(self, reply: dict[str, Any]) -> tuple[int, list, Iterable[bytes]]:
        return self._json(200 if reply.get("ok") else HTTP_STATUS.get(reply.get("code", ""), 400), reply)

    def _command(self, name: str, environ: dict[str, Any]) -> tuple[int, list, Iterable[bytes]]:
        """POST /api/commands/<name>: the token first (before reading any body), then the ingest rate limit, then
        the body as the command's fields (application/json) or as its data frame (anything else; the fields then
        come from the `args` query parameter, a JSON object), then dispatch."""
        if not bearer_ok(environ, self.token):
            _read_done(environ)
            return self._error(401, "unauthorized", "state-changing requests need 'Authorization: Bearer <token>' "
                                                    "(console.token, console.token_file or {state_dir}/console.token)",
                               extra=[("WWW-Authenticate", 'Bearer realm="flashtalk-live"')])
        if environ.get("HTTP_TRANSFER_ENCODING") and not environ.get("CONTENT_LENGTH"):
            # A chunked body is never read here: taken as empty, `skip {"segment_id": X}` would run as a bare skip.
            _read_done(environ)
            return self._error(411, "bad_header", "send the body with a Content-Length (chunked bodies are not read)")
        peer = self._peer(environ, trusted=True)
        try:
            self.ingest.limiter.check(peer.name)
            fields, data = self._read_request(environ)
        except Rejection as e:
            return self._reply({"ok": False, **e.reply_fields()})
        finally:
            _read_done(environ)
        header = json.dumps({**fields, "v": 1, "cmd": name}).encode()
        return self._reply(self.ingest.dispatch(peer, header, data))

    def _read_request(self, environ: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise Rejection("bad_header", "Content-Length is not a number") from None
        if length > self.max_body:
            raise Rejection("oversize", f"body of {length} bytes exceeds ingest.max_message_bytes {self.max_body}")
        try:
            body = environ["wsgi.input"].read(length) if length > 0 else b""
        except OSError:  # the socket's timeout, or the read deadline ended the connection
            raise Rejection("bad_request", "the body did not arrive in time") from None
        if len(body) < max(length, 0):  # the connection ended early: half a clip is not a command
            raise Rejection("bad_request", f"body ended after {len(body)} of its {length} bytes (Content-Length)")
        ctype = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
        q = parse_qs(environ.get("QUERY_STRING", ""))
        if ctype == "application/json":
            fields = self._json_object(body or b"{}", "body")
            if "args" in q:
                raise Rejection("bad_header", "fields go in the JSON body or in ?args=, not both", "args")
            return fields, None
        fields = self._json_object(q["args"][0].encode(), "args") if "args" in q else {}
        return fields, (body if length > 0 or ctype else None)

    @staticmethod
    def _json_object(raw: bytes, where: str) -> dict[str, Any]:
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            raise Rejection("bad_json", f"{where}: not JSON", where) from None
        if not isinstance(obj, dict):
            raise Rejection("bad_header", f"{where}: a JSON object of the command's fields expected", where)
        return obj

    # -- the preview -----------------------------------------------------------------------------------
    def _preview_jpg(self, environ: dict[str, Any]) -> tuple[int, list, Iterable[bytes]]:
        n, jpeg = self.preview.jpeg()
        if jpeg is None:
            return self._error(503, "unavailable", "nothing has aired yet", extra=[("Retry-After", "1")])
        return 200, [("Content-Type", "image/jpeg"), ("Content-Length", str(len(jpeg))),
                     ("X-Frame-Number", str(n))], [jpeg]

    def _preview_mjpeg(self, environ: dict[str, Any]) -> tuple[int, list, Iterable[bytes]]:
        return 200, [("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")], self._mjpeg_stream()

    def _preview_wav(self, environ: dict[str, Any]) -> tuple[int, list, Iterable[bytes]]:
        """The programme sound as it aired: an endless 16-bit WAV (preview.py); the page's Listen button plays it."""
        n, _, audio = self.tap.latest()
        if audio is None:
            return self._error(503, "unavailable", "nothing has aired yet", extra=[("Retry-After", "1")])
        channels = int(np.asarray(audio).reshape(audio.shape[0], -1).shape[1])
        return 200, [("Content-Type", "audio/wav")], self._wav_stream(channels)

    def _wav_stream(self, channels: int) -> Iterable[bytes]:
        self.tap.add_listener(1)
        try:
            yield wav_header(self.tap.audio_rate, channels)
            n = -1
            while not self.closed.is_set():
                n, frames = self.tap.audio_after(n, timeout_s=1.0)
                if frames:
                    yield pcm16(frames, channels)
        finally:
            self.tap.add_listener(-1)

    def _mjpeg_stream(self) -> Iterable[bytes]:
        """Every viewer polls the shared encoder once per interval: the encode count does not grow with viewers."""
        self.preview.add_viewer(1)
        last = -1
        try:
            while not self.closed.is_set():
                n, jpeg = self.preview.jpeg()
                if jpeg is not None and n != last:
                    last = n
                    yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                           f"X-Frame-Number: {n}\r\n\r\n").encode() + jpeg + b"\r\n"
                self.closed.wait(self.preview.interval_s)
        finally:
            self.preview.add_viewer(-1)

