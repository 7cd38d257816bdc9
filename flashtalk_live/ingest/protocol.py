"""The ZeroMQ wire format, version 1: parse request frames into a `Request`, build reply frames. Pure, no I/O.

A request is multipart ``[header, (data)]``: a UTF-8 JSON object ``{"v": 1, "cmd": ..., "id": ..., ...}`` and, for
commands that carry data (ingest/commands.py says which), one frame of bytes. A reply is one JSON frame
``{"v": 1, "ok": true, ...}`` or ``{"v": 1, "ok": false, "code": ..., "reason": ..., ("field": ...)}``.
docs/protocol.md is the specification.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

from flashtalk_live.errors import REJECT_CODES, Rejection  # noqa: F401 - REJECT_CODES re-exported for clients
from flashtalk_live.ingest.commands import Args, Command, check_data, lookup, validate_args

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(Rejection):
    """A request refused before any handler ran (framing, JSON, envelope, arguments)."""


@dataclass(frozen=True)
class Request:
    """One parsed request: its table entry, typed arguments, the whole JSON header and the data frame if any."""

    command: Command
    args: Args
    header: dict[str, Any]
    data: bytes | None = None

    @property
    def cmd(self) -> str:
        return self.command.name

    @property
    def request_id(self) -> str | None:
        return self.args.id

    @property
    def is_audio(self) -> bool:
        return self.command.data == "audio"


def _as_bytes(frame: Any) -> bytes:
    if isinstance(frame, bytes):
        return frame
    if isinstance(frame, (bytearray, memoryview)):
        return bytes(frame)
    buf = getattr(frame, "bytes", None)  # zmq.Frame
    if isinstance(buf, bytes):
        return buf
    raise ProtocolError("bad_header", f"frame of type {type(frame).__name__} is not bytes")


def split_frames(frames: Sequence[Any]) -> tuple[bytes, bytes | None]:
    """(header, data or None) from a request's one or two frames (routing envelope already removed)."""
    if not isinstance(frames, (list, tuple)):
        raise ProtocolError("bad_header", "a request is a list of frames")
    if len(frames) == 0:
        raise ProtocolError("bad_header", "empty message: expected [header] or [header, data]")
    if len(frames) > 2:
        raise ProtocolError("bad_header", f"{len(frames)} frames: expected [header] or [header, data]")
    return _as_bytes(frames[0]), (_as_bytes(frames[1]) if len(frames) == 2 else None)


def parse_header(raw: bytes) -> dict[str, Any]:
    """The header frame as a JSON object with a supported `v` and a string `cmd` (not yet looked up)."""
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError("oversize", f"header frame is {len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError("bad_json", f"header frame is not UTF-8 JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("bad_header", f"header must be a JSON object, got {type(header).__name__}")
    v = header.get("v")
    if v is None:
        raise ProtocolError("bad_header", 'missing "v" (protocol version; this daemon speaks 1)', "v")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise ProtocolError("bad_header", f'"v" must be an integer, got {type(v).__name__}', "v")
    if v != PROTOCOL_VERSION:
        raise ProtocolError("unsupported_version",
                            f"protocol version {v!r:.20} not supported; this daemon speaks {PROTOCOL_VERSION}", "v")
    cmd = header.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError("bad_header", f'"cmd" must be a non-empty string, got {type(cmd).__name__}', "cmd")
    return header


def parse_request(frames: Sequence[Any], served: "set[str] | frozenset[str] | None" = None) -> Request:
    """Validate one request's frames against the command table. Raises only Rejection (ProtocolError or the
    table's own checks). `served` narrows the command names listed in an unknown_command reason."""
    raw, data = split_frames(frames)
    header = parse_header(raw)
    command = lookup(header["cmd"], served)
    check_data(command, data)
    return Request(command=command, args=validate_args(command, header), header=header, data=data)


# -- building messages ---------------------------------------------------------------------------

def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def ok_reply(**fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": True, **fields}


def error_reply(code: str, reason: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "code": code, "reason": reason, **fields}


def rejection_reply(e: Rejection) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, **e.reply_fields()}


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
