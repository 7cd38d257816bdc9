"""The command table: every control command declared once (name, typed arguments, data frame, who may call it).

The server validates each request against its entry and calls the handler bound to the name; the client's methods,
the CLI verbs, `ping`'s command list and docs/protocol.md's command reference are all derived from `COMMANDS`.
Adding a command is one `Command(...)` here plus its handler (`IngestServer(handlers={name: fn})`).
Pure: pydantic models and checks, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Literal, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flashtalk_live.errors import Rejection

MAX_ID_CHARS = 200  # the protocol's cap; ingest.max_id_chars may set a lower one (limits.check_text: id_too_long)
MAX_URL_CHARS = 2048
MAX_PATH_CHARS = 4096
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8
MAX_CUES = 256  # caption or overlay cues in one clip's header (each list)
OUTPUT_NAME = r"^[A-Za-z0-9_.-]{1,64}$"
# Format hints a client may give; None means "sniff the bytes". Raw PCM needs sample_rate and channels.
AudioFormat = Literal["wav", "mp3", "m4a", "mp4", "aac", "flac", "ogg", "opus", "pcm_s16le"]
RAW_FORMATS = frozenset({"pcm_s16le"})
StreamFormat = Literal["pcm_s16le", "mp3", "ogg", "opus"]  # a streamed clip's formats: decodable from any byte boundary (audio.py)
Mode = Literal["enqueue", "insert", "play_now"]
# The spool mode each whole-clip audio command queues in: the three are named after their modes.
AUDIO_MODES: dict[str, Mode] = {m: m for m in get_args(Mode)}
ENVELOPE = frozenset({"v", "cmd"})  # checked by protocol.parse_header before the table is consulted

Trust = Literal["any", "trusted"]
DataKind = Literal["none", "audio", "image", "stream"]  # stream: the next bytes of a streamed clip


@dataclass(frozen=True)
class Peer:
    """The sender of one request: its transport class ("ipc", "tcp" or "curve"), CURVE key (Z85) if any, address,
    and whether it is trusted (auth.Security.peer_of decides). Trusted peers may call every command."""

    transport: str
    key: str | None
    address: str
    trusted: bool

    @property
    def name(self) -> str:
        """A stable name for rate limits and logs: the key for CURVE peers, the address otherwise."""
        return f"curve:{self.key}" if self.key else f"{self.transport}:{self.address}"


LOCAL_PEER = Peer(transport="ipc", key=None, address="", trusted=True)  # for callers outside the socket


# -- argument models ---------------------------------------------------------------------------------

class Args(BaseModel):
    """Fields every command takes. Strict: no coercion ("5" is not 5), no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS,
                           description="request id, echoed in the reply; makes audio resends safe")


class NoArgs(Args):
    pass


class Cue(BaseModel):
    """A span within a clip, in seconds from the clip's first frame on air. The bounds are checked against the
    decoded clip (`cue_outside_clip`), not here: the duration is not known until then."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    start: float = Field(allow_inf_nan=False, description="seconds from the clip's first aired frame")
    end: float = Field(allow_inf_nan=False, description="seconds from the clip's first aired frame; > start, at "
                       "most the clip's duration")


class CaptionCue(Cue):
    text: str = Field(min_length=1, description="shown from start to end; at most ingest.max_text_chars")


class OverlayCue(Cue):
    name: str = Field(pattern=OUTPUT_NAME, description="a defined layer (overlays.layers or one overlay_set made)")


class AudioArgs(Args):
    format: AudioFormat | None = Field(
        None, description="hint when the bytes are ambiguous (any case); required for raw pcm_s16le")
    sample_rate: int | None = Field(None, ge=1000, le=MAX_SAMPLE_RATE, description="raw PCM: samples per second")
    channels: int | None = Field(None, ge=1, le=MAX_CHANNELS, description="raw PCM: interleaved channels")
    meta: dict[str, Any] | None = Field(None, description="anything; stored with the clip, repeated in `accepted`")
    name: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS, description="a name for people: shown in "
                             "status, the clip's events and the console (stored in meta.name); at most "
                             "ingest.max_id_chars")
    text: str | None = Field(None, min_length=1, description="the clip's transcript: captioned while it airs; at "
                             "most ingest.max_text_chars (stored in meta.text)")
    captions: list[CaptionCue] | None = Field(None, max_length=MAX_CUES, description=f"at most {MAX_CUES} caption "
                                              "cues [{text, start, end}] in seconds within the clip, shown instead "
                                              "of `text` timed by characters (stored in meta.captions)")
    overlays: list[OverlayCue] | None = Field(None, max_length=MAX_CUES, description=f"at most {MAX_CUES} "
                                              "[{name, start, end}]: show layer `name` from start to end seconds "
                                              "after the clip's first aired frame (stored in meta.overlays)")

    @field_validator("format", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _raw_needs_layout(self) -> "AudioArgs":
        if self.format in RAW_FORMATS:
            for name in ("sample_rate", "channels"):
                if getattr(self, name) is None:
                    # A Rejection (not a ValueError) passes through pydantic, keeping the field name.
                    raise Rejection("bad_request", f"format {self.format} needs {name!r}", name)
        return self


class ClipOpenArgs(AudioArgs):
    format: StreamFormat = Field(
        description="pcm_s16le (with sample_rate and channels), mp3 (frames) or ogg / opus (Ogg Opus pages); the "
        "bytes may be cut at any boundary")
    mode: Mode = Field("enqueue", description="enqueue, insert or play_now, as for a whole clip")
    duration_s: float | None = Field(None, gt=0, allow_inf_nan=False, description="the producer's estimate of the "
                                     "clip's length: admission plans with it; cues are checked against it (else "
                                     "against ingest.max_clip_seconds)")


class ClipAppendArgs(Args):
    segment_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="the stream clip_open returned")
    seq: int = Field(ge=0, le=10_000_000, description="0 for the first piece, then +1: a seq already stored is "
                     "acknowledged again (duplicate), one past the next expected is refused (sequence_gap)")


class ClipCloseArgs(Args):
    segment_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="the stream to end")
    duration_s: float | None = Field(None, ge=0, allow_inf_nan=False, description="the producer's final length "
                                     "(logged when it differs from what arrived; the audio received is what airs)")


class CancelArgs(Args):
    segment_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="the clip to drop or cut")


class SkipArgs(Args):
    segment_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS, description="skip only if this clip "
                                   "is still the one on air (`not_on_air` otherwise), so a late click never skips "
                                   "the next clip")


class MoveArgs(Args):
    segment_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="the pending clip to move")
    before: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS,
                               description="put it just before this pending clip")
    after: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS,
                              description="put it just after this pending clip")
    to: int | None = Field(None, ge=0, le=1_000_000, description="put it at this 0-based index among the pending "
                           "clips (0 airs next; past the end: last)")

    @model_validator(mode="after")
    def _one_target(self) -> "MoveArgs":
        given = [n for n in ("before", "after", "to") if getattr(self, n) is not None]
        if len(given) != 1:
            raise Rejection("bad_request", f"move: give exactly one of before, after, to (got "
                                           f"{', '.join(given) or 'none'})", given[1] if len(given) > 1 else "to")
        return self


class PingArgs(Args):
    event: bool = Field(False, description="also publish a `pong` event on the PUB socket")
    nonce: str | None = Field(None, max_length=MAX_ID_CHARS, description="carried by that `pong` event")


class OutputAddArgs(Args):
    name: str = Field(pattern=OUTPUT_NAME, description="unique output name, 1-64 of [A-Za-z0-9_.-]")
    url: str = Field(min_length=1, max_length=MAX_URL_CHARS,
                     description="rtmp://host/app/key, rtmps://..., or an absolute .flv/.mp4 path inside "
                                 "output_policy.file_dirs",
                     json_schema_extra={"secret": True})  # may carry a stream key: the CLI never takes it on argv
    segment_seconds: float | None = Field(None, gt=0, description="files only: a new file every N seconds")


class OutputRemoveArgs(Args):
    name: str = Field(pattern=OUTPUT_NAME, description="the output to stop")


class SetAvatarArgs(Args):
    image: str | None = Field(None, min_length=1, max_length=MAX_PATH_CHARS,
                              description="a portrait file inside ingest.avatar_dirs (trusted peers only); else send "
                                          "the picture's bytes as the data frame")
    prompt: str | None = Field(None, min_length=1, description="the new scene prompt (default: the current one); "
                               "at most ingest.max_prompt_chars")


Anchor = Literal["top_left", "top", "top_right", "left", "center", "right", "bottom_left", "bottom", "bottom_right"]


class OverlayNameArgs(Args):
    name: str = Field(pattern=OUTPUT_NAME, description="the layer (overlays.layers, ai_label, or one overlay_set made)")


class OverlayShowArgs(OverlayNameArgs):
    seconds: float | None = Field(None, gt=0, le=86400, description="off air again after this long (default: until "
                                  "overlay_hide)")


class OverlaySetArgs(OverlayNameArgs):
    text: str | None = Field(None, min_length=1, description="the layer's text (else the data frame's PNG/JPEG/WebP "
                             "bytes); at most ingest.max_text_chars")
    anchor: Anchor | None = Field(None, description="where (default: the layer's, or center for a new one)")
    margin: tuple[int, int] | None = Field(None, description="px from the anchored edges: [x, y]")
    width: int | None = Field(None, gt=0, le=8192, description="image: scaled to this width; text: wrapped at it")
    font_size: int | None = Field(None, gt=0, le=400)
    opacity: float | None = Field(None, ge=0, le=1)
    fade_s: float | None = Field(None, ge=0, le=10)


# -- the table ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """One control command. data: "audio" (a required audio frame), "image" (an optional picture frame) or "none".
    trust: "trusted" commands are refused to untrusted peers; `trusted_fields` only when those fields are set."""

    name: str
    args: type[Args]
    description: str
    data: DataKind = "none"
    trust: Trust = "any"
    trusted_fields: frozenset[str] = field(default_factory=frozenset)


COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("enqueue", AudioArgs, "append a clip to the queue", data="audio"),
    Command("insert", AudioArgs, "play a clip next, after the clip on air and earlier inserts", data="audio"),
    Command("play_now", AudioArgs, "cut the clip on air at the first frame that can still be rendered in time and "
            "play this one", data="audio"),
    Command("clip_open", ClipOpenArgs, "start a streamed clip: queued now (mode), its audio follows in clip_append; "
            "replies with its segment_id"),
    Command("clip_append", ClipAppendArgs, "the next bytes of a streamed clip (the data frame), in seq order; "
            "acknowledged once stored in the spool", data="stream"),
    Command("clip_close", ClipCloseArgs, "end a streamed clip: it airs to the end of what arrived"),
    Command("clip_abort", CancelArgs, "drop a streamed clip (pending: removed; on air: cut)"),
    Command("clear", NoArgs, "drop every pending clip; the clip on air finishes"),
    Command("cancel", CancelArgs, "drop one pending clip, or cut the clip on air"),
    Command("skip", SkipArgs, "cut whatever is on air now, a queue clip (dropped, as `cancel` does) or a programme "
            "item (the programme goes on with its next item)"),
    Command("move", MoveArgs, "move one pending clip before/after another pending clip, or to an index"),
    Command("status", NoArgs, "queue, broadcast, renderer and output status"),
    Command("ping", PingArgs, "liveness, protocol version, limits and the commands this daemon serves"),
    Command("outputs", NoArgs, "every output with its state (stream keys masked)"),
    Command("output_add", OutputAddArgs, "start a new output now", trust="trusted"),
    Command("output_remove", OutputRemoveArgs, "stop an output now", trust="trusted"),
    Command("set_avatar", SetAvatarArgs, "new portrait (the data frame's PNG/JPEG bytes, or `image`) and/or prompt, "
            "applied at the next chunk boundary", data="image", trusted_fields=frozenset({"image"})),
    Command("overlay_show", OverlayShowArgs, "put a layer on air at the next aired frame (for `seconds`, or until "
            "overlay_hide)"),
    Command("overlay_hide", OverlayNameArgs, "take a layer off air at the next aired frame (fading out)"),
    Command("overlay_set", OverlaySetArgs, "define or replace a layer: `text`, or the data frame's image (alpha "
            "kept); a new layer starts off air", data="image"),
)}
AUDIO_COMMANDS = frozenset(n for n, c in COMMANDS.items() if c.data == "audio")


A = TypeVar("A", bound=Args)


@dataclass(frozen=True)
class Call(Generic[A]):
    """One validated request as a handler sees it: `args` is the command's own argument model, so a handler
    declared `call: Call[OverlaySetArgs]` reads its fields typed."""

    peer: Peer
    command: Command
    args: A
    data: bytes | None = None

    @property
    def name(self) -> str:
        return self.command.name


# A handler takes the Call of its own command (Call[ThatCommandsArgs]) and returns the reply's fields.
Handler = Callable[[Call[Any]], "dict[str, Any] | None"]


# -- checks ------------------------------------------------------------------------------------------

def lookup(name: str, served: "set[str] | frozenset[str] | None" = None) -> Command:
    """The table entry for `name` (unknown_command otherwise; the reason lists what `served` has, else the table)."""
    cmd = COMMANDS.get(name)
    if cmd is None:
        known = ", ".join(sorted(served if served is not None else COMMANDS))
        raise Rejection("unknown_command", f"unknown command {name[:40]!r}; known: {known}")
    return cmd


def validate_args(command: Command, header: dict[str, Any]) -> Args:
    """The header's fields (all but v and cmd) as the command's typed arguments; bad_request naming the field.

    Validated in pydantic's JSON mode: the header is JSON, so a field takes every value JSON can spell (an array for
    a pair such as `margin`; strict Python mode would want a tuple no JSON client can send). The reason carries
    pydantic's message and the field's place, never the value (it may hold a stream key)."""
    fields = {k: v for k, v in header.items() if k not in ENVELOPE}
    try:
        return command.args.model_validate_json(json.dumps(fields))
    except ValidationError as e:
        err = e.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in err["loc"]) or None
        msg = "not a field of this command" if err["type"] == "extra_forbidden" else err["msg"]
        raise Rejection("bad_request", f"{command.name}: {where or 'request'}: {msg}", where) from None


def check_data(command: Command, data: bytes | None) -> None:
    """The data frame is there when the command needs one, and absent when it takes none (an image frame's
    contents are the handler's to check: limits.check_image)."""
    if command.data == "none":
        if data is not None:
            raise Rejection("bad_header", f"{command.name} takes no data frame, got 2 frames")
    elif command.data in ("audio", "stream"):
        if data is None:
            raise Rejection("missing_audio", f"{command.name} needs a second frame with the audio bytes")
        if len(data) == 0:
            raise Rejection("empty_audio", "the audio frame is zero bytes")


def authorize(command: Command, args: Args, peer: Peer) -> None:
    """`unauthorized` when an untrusted peer calls a trusted command or sets a trusted-only field."""
    if peer.trusted:
        return
    hint = "connect over ipc, or add your key to ingest.trusted_client_keys"
    if command.trust == "trusted":
        raise Rejection("unauthorized", f"{command.name} needs a trusted peer ({peer.transport} is not): {hint}")
    for name in sorted(command.trusted_fields):
        if getattr(args, name) is not None:
            raise Rejection("unauthorized", f"{command.name} with {name!r} needs a trusted peer ({peer.transport} is "
                                            f"not): send the data frame instead, or {hint}", name)
