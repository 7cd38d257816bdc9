"""A small Python client for a running daemon: push clips, control the queue, follow the event feed.

One method per command of the table (ingest/commands.py): `client.cancel(segment_id)`, `client.output_add(name, url)`,
...; the audio commands take a path or bytes. Before the first request the endpoint is probed, so a daemon that is not
running is reported at once (`NoDaemon`). Every call waits at most `timeout_s` for its reply. No reply means
"unknown": the daemon may be busy, or the message was larger than its ZMQ_MAXMSGSIZE, which libzmq drops without a
word. Audio calls carry a request id, so resending the same call (same id) after a timeout never queues it twice.
`Client.stream(chunks, ...)` streams one clip as its audio is produced (clip_open / clip_append / clip_close).
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import zmq

from flashtalk_live.ingest.auth import CurveClientKeys
from flashtalk_live.ingest.commands import COMMANDS, Command
from flashtalk_live.ingest.protocol import decode_reply, encode_request

_SUFFIX_FORMAT = {
    ".wav": "wav", ".wave": "wav", ".mp3": "mp3", ".m4a": "m4a", ".mp4": "m4a", ".aac": "aac",
    ".flac": "flac", ".ogg": "ogg", ".oga": "ogg", ".opus": "opus", ".pcm": "pcm_s16le", ".raw": "pcm_s16le",
    ".s16": "pcm_s16le",
}


class ClientError(Exception):
    """Base class of client failures."""


class ClientTimeout(ClientError):
    """No reply (or no event) in time."""


class NoDaemon(ClientError):
    """Nothing listens at the endpoint: the daemon is not running (or is another one's, or stopped)."""

    def __init__(self, endpoint: str, why: str) -> None:
        super().__init__(f"no daemon at {endpoint}: is it running? ({why})")
        self.endpoint = endpoint


class Rejected(ClientError):
    """The daemon answered ok=false: `code` is machine-readable, `reason` for humans, `field` the request field at
    fault (or None), `reply` the whole answer."""

    def __init__(self, code: str, reason: str, reply: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.reply = reply or {}
        self.field: str | None = self.reply.get("field")


def probe(endpoint: str, timeout_s: float = 1.0) -> str | None:
    """Why nothing can be listening at `endpoint` (a missing socket file, a refused connection), or None when
    something accepts connections there or it cannot be told (other transports, a slow network)."""
    target: str | tuple[str, int]
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        address = "\0" + path[1:] if path.startswith("@") else path
        if not path.startswith("@") and not os.path.exists(path):
            return "no socket file"
        family, target = socket.AF_UNIX, address
    elif endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        host = host.strip("[]")
        if host in ("*", "0.0.0.0", ""):
            host = "127.0.0.1"
        try:
            target = (host, int(port))
        except ValueError:
            return None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
    else:
        return None
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout_s)
        try:
            s.connect(target)
        except (ConnectionRefusedError, FileNotFoundError):
            return "connection refused"
        except PermissionError:
            raise ClientError(f"permission denied on {endpoint}: the daemon's ipc sockets belong to its user/group") \
                from None
        except OSError:
            return None  # unreachable host, timeout, a name that does not resolve: let the request tell
    return None


def format_for_path(path: str | os.PathLike[str]) -> str | None:
    return _SUFFIX_FORMAT.get(Path(path).suffix.lower())


class Client:
    """Request/reply over a DEALER socket; a fresh socket after any timeout so a late reply can't be mistaken."""

    def __init__(self, endpoint: str, timeout_s: float = 5.0, *, context: zmq.Context | None = None,
                 curve: CurveClientKeys | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.curve = curve  # CURVE keys for a tcp:// daemon (ingest.tcp_auth = "curve")
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None

    def _socket(self) -> zmq.Socket:
        if self._sock is None:
            why = probe(self.endpoint, min(self.timeout_s, 2.0))
            if why is not None:
                raise NoDaemon(self.endpoint, why)
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            if self.curve is not None:
                self.curve.apply(s)
            s.connect(self.endpoint)
            self._sock = s
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None

    def close(self) -> None:
        self._reset()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- generic -----------------------------------------------------------------------------------
    def call(self, cmd: str, data: bytes | None = None, *, timeout_s: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and return the ok reply; raises Rejected or ClientTimeout."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        frames = encode_request(cmd, data, **fields)
        size = sum(len(f) for f in frames)
        sock = self._socket()
        deadline = time.monotonic() + timeout
        # A DEALER with no connection to send on (a CURVE handshake the server refused: a revoked key) blocks a
        # send for ever: the request waits for a writable socket within the same deadline as its reply.
        if not sock.poll(int(timeout * 1000) + 1, zmq.POLLOUT):
            self._reset()
            raise ClientTimeout(
                f"{cmd!r} could not be sent to {self.endpoint} within {timeout:g} s: no connection to the daemon "
                "was accepted (for tcp:// with CURVE: the daemon may not trust this client's key, or revoked it)")
        # The empty delimiter makes the envelope unambiguous, as a REQ socket would.
        sock.send_multipart([b""] + frames, copy=size < 65536)
        rid = fields.get("id")
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                self._reset()
                why = probe(self.endpoint, 1.0)
                if why is not None:
                    raise NoDaemon(self.endpoint, f"{why} after the request was sent")
                raise ClientTimeout(
                    f"no reply to {cmd!r} from {self.endpoint} within {timeout:g} s: the daemon is busy, or the "
                    f"message ({size} bytes) exceeded its ZMQ_MAXMSGSIZE (ping reports max_message_bytes), which "
                    "libzmq drops silently. For audio, resend with the same id: it is never queued twice.")
            reply_frames = sock.recv_multipart()
            try:
                reply = decode_reply(reply_frames[-1])
            except ValueError as e:
                raise ClientError(f"malformed reply from {self.endpoint}: {e}") from None
            if rid is not None and reply.get("id") not in (None, rid):
                continue  # a stale reply to an earlier request on this socket
            break
        if not reply.get("ok"):
            raise Rejected(str(reply.get("code", "unknown")), str(reply.get("reason", "")), reply)
        return reply

    # -- audio -------------------------------------------------------------------------------------
    def _push(self, cmd: str, audio: bytes | bytearray | str | os.PathLike[str], format: str | None,
              sample_rate: int | None, channels: int | None, request_id: str | None,
              meta: dict[str, Any] | None, timeout_s: float | None, cues: dict[str, Any]) -> dict[str, Any]:
        if isinstance(audio, (bytes, bytearray, memoryview)):
            data = bytes(audio)
        else:
            p = Path(audio)
            data = p.read_bytes()
            format = format or format_for_path(p)
        return self.call(cmd, data, timeout_s=timeout_s, id=request_id or uuid.uuid4().hex, format=format,
                         sample_rate=sample_rate, channels=channels, meta=meta, **cues)

    def enqueue(self, audio: bytes | str | os.PathLike[str], format: str | None = None, sample_rate: int | None = None,
                channels: int | None = None, request_id: str | None = None, *, meta: dict[str, Any] | None = None,
                timeout_s: float | None = None, **cues: Any) -> dict[str, Any]:
        """Append a clip (a path or the file's bytes). Returns the ack: segment_id, position, duration_s, ...
        `cues`: the clip's `text=`, `captions=[{text, start, end}]`, `overlays=[{name, start, end}]`
        (docs/overlays.md)."""
        return self._push("enqueue", audio, format, sample_rate, channels, request_id, meta, timeout_s, cues)

    def insert(self, audio: bytes | str | os.PathLike[str], format: str | None = None, sample_rate: int | None = None,
               channels: int | None = None, request_id: str | None = None, *, meta: dict[str, Any] | None = None,
               timeout_s: float | None = None, **cues: Any) -> dict[str, Any]:
        """Play this clip next, after the current clip and any earlier inserts (`cues` as for enqueue)."""
        return self._push("insert", audio, format, sample_rate, channels, request_id, meta, timeout_s, cues)

    def stream(self, chunks: Iterable[bytes] | None = None, *, format: str = "pcm_s16le",
               sample_rate: int | None = None, channels: int | None = None, mode: str = "enqueue",
               duration_s: float | None = None, meta: dict[str, Any] | None = None, segment_id: str | None = None,
               next_seq: int = 0, retry_s: float = 10.0, **cues: Any) -> "ClipStream":
        """A streamed clip as a context manager: `with client.stream(tts_chunks, sample_rate=22050, channels=1,
        text="...") as s:` opens it (`s.segment_id`), sends each chunk of `chunks` as the iterator yields it (at the
        end of the block, or when `s.send_all()` is called; `s.append(b)` sends one piece) and closes it when the
        block ends; an exception in the block aborts it (not a `stream_timed_out`: the daemon cut that stream itself and
        airs what it received). `segment_id`/`next_seq` resume a stream opened earlier
        (after a restart of the producer or the daemon). Each piece is resent with its seq for up to `retry_s` s
        while the daemon does not answer: a stored seq is acknowledged again, so nothing is lost or doubled."""
        return ClipStream(self, chunks, dict(format=format, sample_rate=sample_rate, channels=channels, mode=mode,
                                             duration_s=duration_s, meta=meta, **cues),
                          segment_id=segment_id, next_seq=next_seq, retry_s=retry_s)

    def play_now(self, audio: bytes | str | os.PathLike[str], format: str | None = None, sample_rate: int | None = None,
                 channels: int | None = None, request_id: str | None = None, *, meta: dict[str, Any] | None = None,
                 timeout_s: float | None = None, **cues: Any) -> dict[str, Any]:
        """Cut the current clip at the first frame that can still be rendered in time and play this one (`cues` as
        for enqueue)."""
        return self._push("play_now", audio, format, sample_rate, channels, request_id, meta, timeout_s, cues)



ENDED_BY_DAEMON = frozenset({"stream_timed_out"})  # refusals of a stream the daemon ended: it airs what it holds


class ClipStream:
    """One streamed clip of a Client (see Client.stream)."""

    def __init__(self, client: Client, chunks: Iterable[bytes] | None, open_fields: dict[str, Any], *,
                 segment_id: str | None = None, next_seq: int = 0, retry_s: float = 10.0) -> None:
        self.client, self.open_fields, self.retry_s = client, open_fields, retry_s
        self._chunks = iter(chunks) if chunks is not None else None
        self.segment_id = segment_id
        self.next_seq = next_seq
        self.acks: list[dict[str, Any]] = []  # every append's reply, in order
        self.closed: dict[str, Any] | None = None  # clip_close's reply

    def _retrying(self, cmd: str, data: bytes | None = None, **fields: Any) -> dict[str, Any]:
        """One request, resent unchanged while the daemon does not answer (a restart) for up to retry_s."""
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                return self.client.call(cmd, data, **fields)
            except (ClientTimeout, NoDaemon):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def open(self) -> str:
        if self.segment_id is None:
            ack = self._retrying("clip_open", id=uuid.uuid4().hex, **self.open_fields)
            self.segment_id = ack["segment_id"]
        return self.segment_id

    def append(self, data: bytes) -> dict[str, Any]:
        """Send the next piece; returns the ack once the daemon stored it."""
        sid = self.open()
        ack = self._retrying("clip_append", bytes(data), segment_id=sid, seq=self.next_seq)
        self.next_seq += 1
        self.acks.append(ack)
        return ack

    def send_all(self) -> None:
        """Send what the chunk iterator yields, each piece as soon as it is yielded."""
        if self._chunks is None:
            return
        for piece in self._chunks:
            if piece:
                self.append(piece)
        self._chunks = None

    def close(self, duration_s: float | None = None) -> dict[str, Any]:
        self.send_all()
        self.closed = self._retrying("clip_close", segment_id=self.open(), duration_s=duration_s)
        return self.closed

    def abort(self) -> None:
        if self.segment_id is not None:
            try:
                self.client.call("clip_abort", segment_id=self.segment_id)
            except Rejected:
                pass  # already gone

    def __enter__(self) -> "ClipStream":
        self.open()
        return self

    def __exit__(self, exc_type: Any, exc: Any, *_: Any) -> None:
        if exc_type is not None:
            # A stream the daemon ended itself (cut by its idle timeout: it airs what it received) is left as it is;
            # an abort there would drop acknowledged audio. Anything else in the block drops the clip.
            if not (isinstance(exc, Rejected) and exc.code in ENDED_BY_DAEMON):
                self.abort()
        elif self.closed is None:
            self.close()


def _command_method(command: Command) -> Callable[..., dict[str, Any]]:
    """Client.<name>(required fields positionally, optional ones by keyword[, data=bytes])."""
    required = [n for n, f in command.args.model_fields.items() if f.is_required()]

    def method(self: Client, *values: Any, data: bytes | None = None, timeout_s: float | None = None,
               **fields: Any) -> dict[str, Any]:
        if len(values) > len(required):
            raise TypeError(f"{command.name}() takes {len(required)} positional field(s): {', '.join(required)}")
        fields.update(zip(required, values))
        return self.call(command.name, data, timeout_s=timeout_s, **fields)

    method.__name__ = method.__qualname__ = command.name
    method.__doc__ = f"{command.description} (fields: {', '.join(command.args.model_fields)})"
    return method


for _command in COMMANDS.values():  # the audio commands have their own methods above (paths, format from suffix)
    if not hasattr(Client, _command.name):
        setattr(Client, _command.name, _command_method(_command))


class EventStream:
    """Iterate over the daemon's PUB feed: each item is an event dict (type, seq, ts, ...).

    PUB/SUB drops what is sent before the subscription reaches the daemon; call `sync(client)` first when the
    events of a request you are about to send matter.
    """

    def __init__(self, endpoint: str, types: list[str] | None = None, timeout_s: float | None = None, *,
                 context: zmq.Context | None = None, curve: CurveClientKeys | None = None) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        for t in (types or [""]):
            self._sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        if types:
            self._sock.setsockopt(zmq.SUBSCRIBE, b"pong")
        if curve is not None:
            curve.apply(self._sock)
        self._sock.connect(endpoint)

    def get(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The next event, or None after timeout_s (None: wait forever)."""
        ms = -1 if timeout_s is None else max(0, int(timeout_s * 1000))
        if not self._sock.poll(ms, zmq.POLLIN):
            return None
        frames = self._sock.recv_multipart()
        return json.loads(frames[-1].decode("utf-8"))

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            ev = self.get(self.timeout_s)
            if ev is None:
                raise ClientTimeout(f"no event from {self.endpoint} within {self.timeout_s:g} s")
            if ev.get("type") == "pong":
                continue
            yield ev

    def sync(self, client: Client, timeout_s: float = 5.0) -> None:
        """Block until this subscription is live: ping with event=true until its 'pong' event arrives."""
        nonce = uuid.uuid4().hex
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            client.call("ping", event=True, nonce=nonce)
            end = time.monotonic() + 0.2
            while (left := end - time.monotonic()) > 0:
                ev = self.get(left)
                if ev is not None and ev.get("type") == "pong" and ev.get("nonce") == nonce:
                    return
        raise ClientTimeout(f"event feed {self.endpoint} did not deliver a pong within {timeout_s:g} s")

    def close(self) -> None:
        self._sock.close(0)

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
