"""The ZeroMQ wire format, version 1: parse request frames into a `Request`, build reply frames. Pure, no I/O.

A request is multipart ``[header, (data)]``: a UTF-8 JSON object ``{"v": 1, "cmd": ..., "id": ..., ...}`` and, for the
audio commands, one frame of encoded audio bytes. A reply is one JSON frame ``{"v": 1, "ok": true, ...}`` or
``{"v": 1, "ok": false, "code": ..., "reason": ...}``. docs/protocol.md is the specification.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

PROTOCOL_VERSION = 1

AUDIO_COMMANDS = frozenset({"enqueue", "insert", "play_now"})
CORE_COMMANDS = frozenset(AUDIO_COMMANDS | {"clear", "cancel", "status", "ping"})

# Format hints a client may give; None means "sniff the bytes". Raw PCM needs sample_rate and channels.
FORMATS = frozenset({"wav", "mp3", "m4a", "mp4", "aac", "flac", "ogg", "opus", "pcm_s16le"})
RAW_FORMATS = frozenset({"pcm_s16le"})

MAX_HEADER_BYTES = 64 * 1024
MAX_ID_CHARS = 200
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8

# Every rejection code the daemon sends (docs/protocol.md explains each).
REJECT_CODES = (
    "bad_json",            # header frame is not UTF-8 JSON
    "bad_header",          # JSON, but not a valid header (missing/mistyped field, wrong frame count)
    "bad_request",         # a command's arguments are invalid (e.g. output_add with a URL no output kind takes)
    "unsupported_version", # "v" is not 1
    "unknown_command",     # "cmd" is not a core or registered command
    "missing_audio",       # audio command without its data frame
    "undecodable_audio",   # the bytes are not audio PyAV can decode
    "empty_audio",         # zero bytes, or a valid file with no samples
    "too_long",            # longer than ingest.max_clip_seconds
    "too_short",           # shorter than ingest.min_clip_seconds
    "oversize",            # header frame over 64 KiB, or a payload that can never fit the spool
    "queue_full",          # the queue's clip/seconds/bytes limit would be exceeded
    "not_found",           # cancel: no such pending or playing segment
    "internal",            # a bug or an I/O error in the daemon; the request changed nothing
)


class ProtocolError(Exception):
    """A request that must be rejected: `code` is one of REJECT_CODES, `reason` is for humans."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Request:
    """One parsed request. `header` is the whole JSON object; `data` the second frame (audio bytes) if any."""

    cmd: str
    header: dict[str, Any]
    data: bytes | None = None
    request_id: str | None = None
    format: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_audio(self) -> bool:
        return self.cmd in AUDIO_COMMANDS


def _int_field(h: dict[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = h.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise ProtocolError("bad_header", f"{name!r} must be an integer, got {v!r:.40}")
    if not lo <= v <= hi:
        raise ProtocolError("bad_header", f"{name!r} must be in {lo}..{hi}, got {v}")
    return v


def _as_bytes(frame: Any) -> bytes:
    if isinstance(frame, bytes):
        return frame
    if isinstance(frame, (bytearray, memoryview)):
        return bytes(frame)
    buf = getattr(frame, "bytes", None)  # zmq.Frame
    if isinstance(buf, bytes):
        return buf
    raise ProtocolError("bad_header", f"frame of type {type(frame).__name__} is not bytes")


def parse_request(frames: Sequence[Any], extra_commands: Iterable[str] = ()) -> Request:
    """Validate one request's frames (routing envelope already removed). Raises only ProtocolError."""
    if not isinstance(frames, (list, tuple)):
        raise ProtocolError("bad_header", "a request is a list of frames")
    if len(frames) == 0:
        raise ProtocolError("bad_header", "empty message: expected [header] or [header, audio]")
    if len(frames) > 2:
        raise ProtocolError("bad_header", f"{len(frames)} frames: expected [header] or [header, audio]")
    raw = _as_bytes(frames[0])
    data = _as_bytes(frames[1]) if len(frames) == 2 else None
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("oversize", f"header frame is {len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        text = raw.decode("utf-8")
        header = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError("bad_json", f"header frame is not UTF-8 JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_header", f"header must be a JSON object, got {type(header).__name__}")

    v = header.get("v")
    if v is None:
        raise ProtocolError("bad_header", 'missing "v" (protocol version; this daemon speaks 1)')
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise ProtocolError("bad_header", f'"v" must be an integer, got {v!r:.40}')
    if v != PROTOCOL_VERSION:
        raise ProtocolError("unsupported_version", f"protocol version {v!r:.20} not supported; this daemon speaks {PROTOCOL_VERSION}")

    cmd = header.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError("bad_header", f'"cmd" must be a non-empty string, got {cmd!r:.40}')
    extras = frozenset(extra_commands)
    if cmd not in CORE_COMMANDS and cmd not in extras:
        known = ", ".join(sorted(CORE_COMMANDS | extras))
        raise ProtocolError("unknown_command", f"unknown command {cmd[:40]!r}; known: {known}")

    rid = header.get("id")
    if rid is not None:
        if not isinstance(rid, str) or not rid or len(rid) > MAX_ID_CHARS:
            raise ProtocolError("bad_header", f'"id" must be a string of 1..{MAX_ID_CHARS} characters, got {rid!r:.40}')

    fmt = sample_rate = channels = None
    if cmd in AUDIO_COMMANDS:
        if data is None:
            raise ProtocolError("missing_audio", f"{cmd} needs a second frame with the audio bytes")
        if len(data) == 0:
            raise ProtocolError("empty_audio", "the audio frame is zero bytes")
        fmt = header.get("format")
        if fmt is not None:
            if not isinstance(fmt, str) or fmt.lower() not in FORMATS:
                raise ProtocolError("bad_header", f'"format" {fmt!r:.40} not one of {", ".join(sorted(FORMATS))}')
            fmt = fmt.lower()
        sample_rate = _int_field(header, "sample_rate", 1000, MAX_SAMPLE_RATE)
        channels = _int_field(header, "channels", 1, MAX_CHANNELS)
        if fmt in RAW_FORMATS:
            if sample_rate is None or channels is None:
                raise ProtocolError("bad_header", f'format {fmt} needs "sample_rate" and "channels"')
        meta = header.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise ProtocolError("bad_header", f'"meta" must be a JSON object, got {type(meta).__name__}')
    elif cmd in CORE_COMMANDS and data is not None:
        raise ProtocolError("bad_header", f"{cmd} takes no data frame, got {len(frames)} frames")

    if cmd == "cancel":
        sid = header.get("segment_id")
        if not isinstance(sid, str) or not sid or len(sid) > MAX_ID_CHARS:
            raise ProtocolError("bad_header", f'cancel needs "segment_id" (string), got {sid!r:.40}')

    reserved = {"v", "cmd", "id", "format", "sample_rate", "channels"}
    extra = {k: val for k, val in header.items() if k not in reserved}
    return Request(cmd=cmd, header=header, data=data, request_id=rid, format=fmt,
                   sample_rate=sample_rate, channels=channels, extra=extra)


# -- building messages ---------------------------------------------------------------------------

def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def ok_reply(**fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": True, **fields}


def error_reply(code: str, reason: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "code": code, "reason": reason, **fields}


def encode_reply(reply: dict[str, Any]) -> bytes:
    return _dumps(reply)


def encode_request(cmd: str, data: bytes | None = None, **fields: Any) -> list[bytes]:
    """Build request frames: fields with value None are left out."""
    header = {"v": PROTOCOL_VERSION, "cmd": cmd, **{k: v for k, v in fields.items() if v is not None}}
    frames = [_dumps(header)]
    if data is not None:
        frames.append(bytes(data))
    return frames


def encode_event(event: dict[str, Any]) -> list[bytes]:
    """An event on the PUB socket: [type, json]; subscribers can filter on the type prefix."""
    return [str(event.get("type", "")).encode("utf-8"), _dumps(event)]


def decode_reply(frame: bytes) -> dict[str, Any]:
    obj = json.loads(frame.decode("utf-8"))
    if not isinstance(obj, dict) or "ok" not in obj:
        raise ValueError(f"not a flashtalk-live reply: {frame[:80]!r}")
    return obj
