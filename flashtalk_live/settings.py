"""The daemon's one typed configuration: TOML file < environment (FLASHTALK_LIVE_...) < CLI flags."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "FLASHTALK_LIVE_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"  # names the config file (the CLI's -c default), not a setting
# The demo programme of a clone of the repository (README: a plain `flashtalk-live run` airs it).
DEMO_PLAYLIST = Path(__file__).resolve().parent.parent / "playlists" / "example.m3u"


def default_state_dir() -> str:
    """$XDG_STATE_HOME/flashtalk-live (~/.local/state/flashtalk-live): where `run` and the CLI verbs meet by default,
    whatever their current directories."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "flashtalk-live")


def default_playlist() -> str | None:
    return str(DEMO_PLAYLIST) if DEMO_PLAYLIST.is_file() else None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IngestSettings(_Section):
    """The ZeroMQ front door."""

    control: list[str] = Field(
        default_factory=lambda: ["ipc://{state_dir}/control.sock"],
        description="ROUTER endpoints for requests (ipc:// and/or tcp://)",
    )
    events: list[str] = Field(
        default_factory=lambda: ["ipc://{state_dir}/events.sock"],
        description="PUB endpoints for the event feed",
    )
    max_message_bytes: int = Field(64 * 1024 * 1024, gt=0, description="ZMQ_MAXMSGSIZE; bigger messages are dropped by libzmq with no reply")
    max_clip_seconds: float = Field(600.0, gt=0)
    min_clip_seconds: float = Field(0.02, ge=0)


class QueueSettings(_Section):
    """The durable spool of acknowledged clips."""

    spool_dir: str = "{state_dir}/spool"
    max_clips: int = Field(2000, gt=0)
    max_queued_seconds: float = Field(4 * 3600.0, gt=0)
    max_spool_bytes: int = Field(8 * 1024**3, gt=0)


class ProgrammeSettings(_Section):
    """What plays when the queue is empty."""

    playlist: str | None = Field(default_factory=default_playlist,
                                 description='M3U or TOML playlist (default: the demo programme); "" means idle silence')
    shuffle: bool = False
    pause_seconds: float = Field(0.0, ge=0, description="silence between programme clips")
    reload_check_seconds: float = Field(2.0, gt=0)

    @field_validator("playlist")
    @classmethod
    def _empty_is_none(cls, v: str | None) -> str | None:
        return v or None


class VideoSettings(_Section):
    """Output geometry and the avatar."""

    width: int = Field(448, gt=0)
    height: int = Field(768, gt=0)
    fps: int = Field(25, gt=0, le=60)
    chunk_frames: int = Field(28, gt=0, description="new frames per render chunk (FlashTalk: frame_num - motion_frames)")
    reference_image: str | None = Field(None, description="portrait; none uses the embedded demo portrait")
    fit: Literal["cover", "contain"] = "cover"
    prompt: str = "A person is talking to the camera in a live-commerce studio."

    @field_validator("width", "height")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be even for yuv420p, got {v}")
        return v


class RendererSettings(_Section):
    """Which renderer draws the avatar and how far it may run ahead."""

    kind: Literal["still", "flashtalk"] = "still"
    lookahead_chunks: int = Field(3, ge=1, le=32, description="rendered chunks buffered ahead of the encoder")
    fallback_retry_initial_s: float = Field(5.0, gt=0)
    fallback_retry_max_s: float = Field(300.0, gt=0)
    deadline_factor: float = Field(
        2.5, gt=1, description="an engine chunk not done after this many times its duration counts as failed; keep it "
        "below lookahead_chunks so the still renderer takes over before the buffer runs dry")


class ModelSettings(_Section):
    """FlashTalk weights, profile and numerics."""

    weights_dir: str | None = Field(None, description="SoulX-FlashTalk-14B folder")
    wav2vec_dir: str | None = Field(None, description="chinese-wav2vec2-base folder")
    profile: str = "quality"
    device: str = "cuda"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    attention: Literal["sdpa", "flash"] = "sdpa"
    compile: bool = Field(False, description="torch.compile the DiT blocks at start-up (slower warm-up, faster chunks)")
    text_cache_dir: str = "{state_dir}/text-cache"
    gpus: int | list[int] = 1
    # Drift control (docs/engine.md argues the defaults).
    drift_every_chunks: int = Field(1, ge=1, description="measure identity/colour drift every N chunks")
    drift_identity_min: float = Field(0.80, ge=-1, le=1, description="CLIP cosine to the reference below this is drift")
    drift_colour_max: float = Field(12.0, gt=0, description="Lab distance of the raw decoded frame above this is drift")
    drift_patience_chunks: int = Field(2, ge=1, description="consecutive drifting measures before an early re-anchor")
    recalibrate_interval_s: float = Field(600.0, ge=0, description="scheduled re-anchor every N s of output (0: off)")
    recalibrate_max_wait_s: float = Field(60.0, ge=0, description="re-anchor even in speech when no idle chunk came this long after it was due")
    recalibrate_crossfade_frames: int = Field(6, ge=0, description="dissolve from the last shown frame after a re-anchor")


class EncoderSettings(_Section):
    """Encode once: H.264 + AAC."""

    video_codec: Literal["libx264", "h264_nvenc"] = "libx264"
    preset: str = "veryfast"
    tune: str | None = "zerolatency"
    video_bitrate: int = Field(2_500_000, gt=0)
    bufsize: int | None = Field(None, description="defaults to 2 x bitrate")
    gop_seconds: float = Field(2.0, gt=0)
    bframes: int = Field(0, ge=0)
    audio_rate: Literal[44100, 48000] = 48000
    audio_channels: Literal[1, 2] = 2
    audio_bitrate: int = Field(128_000, gt=0)
    threads: int = Field(0, ge=0, description="0 lets the encoder choose")


class OutputSettings(_Section):
    """One destination: rtmp://, rtmps://, or a local .flv/.mp4 file or segmented recording."""

    name: str
    url: str = Field(description="rtmp(s)://host/app/key, or a file path (.flv, .mp4; %Y etc. and {n} allowed)")
    enabled: bool = True
    segment_seconds: float | None = Field(None, gt=0, description="files only: start a new file every N seconds")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v):
            raise ValueError(f"output name must be 1-64 of [A-Za-z0-9_.-], got {v!r}")
        return v


class OutputPolicy(_Section):
    """How every output behaves when its endpoint misbehaves."""

    rw_timeout_s: float = Field(2.0, gt=0)
    queue_packets: int = Field(500, gt=10)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    backoff_jitter: float = Field(0.2, ge=0, le=1)
    stall_timeout_s: float = Field(10.0, gt=0, description="no progress for this long counts as down")
    planned_reconnect_hours: float = Field(24.0 * 20, gt=0, description="rebase before FLV's 24.8-day timestamp wrap")


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)


class LoggingSettings(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class Settings(BaseSettings):
    """The whole daemon."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    state_dir: str = Field(default_factory=default_state_dir,
                           description="spool, sockets, recordings; made absolute (a relative path: against the "
                                       "config file's directory, else the current one)")
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    programme: ProgrammeSettings = Field(default_factory=ProgrammeSettings)
    video: VideoSettings = Field(default_factory=VideoSettings)
    renderer: RendererSettings = Field(default_factory=RendererSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    outputs: list[OutputSettings] = Field(
        default_factory=lambda: [OutputSettings(name="recording", url="{state_dir}/recordings/live-%Y%m%d-%H%M%S.flv", segment_seconds=3600)]
    )
    output_policy: OutputPolicy = Field(default_factory=OutputPolicy)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_settings merges file < environment < flags itself, so only the merged kwargs are read here.
        return (init_settings,)

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if self.encoder.audio_rate % self.video.fps:
            raise ValueError(
                f"encoder.audio_rate {self.encoder.audio_rate} must be a whole number of samples per frame at video.fps {self.video.fps}"
            )
        names = [o.name for o in self.outputs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"outputs: duplicate names {sorted(dup)}")
        return self

    # -- derived values ------------------------------------------------------------------------
    def path(self, template: str) -> str:
        """Expand {state_dir} in a configured path or endpoint."""
        return template.replace("{state_dir}", str(Path(self.state_dir).expanduser()))

    @property
    def samples_per_frame(self) -> int:
        return self.encoder.audio_rate // self.video.fps


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names field, value and expectation."""


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _env_tree(environ: dict[str, str]) -> dict[str, Any]:
    """FLASHTALK_LIVE_A__B=v -> {"a": {"b": v}}; values parse as JSON when they can (lists, numbers, bools)."""
    import json

    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == CONFIG_ENV:
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return tree


def parse_override(item: str) -> dict[str, Any]:
    """'encoder.preset=ultrafast' -> {"encoder": {"preset": "ultrafast"}} (value parsed as TOML when possible)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. encoder.preset=ultrafast")
    key, raw = item.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node: dict[str, Any] = {}
    root = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return root


# Keys whose relative values name files: in a config file they mean "next to this file", not the current directory.
_FILE_KEYS = (("state_dir",), ("queue", "spool_dir"), ("programme", "playlist"), ("video", "reference_image"),
              ("model", "weights_dir"), ("model", "wav2vec_dir"), ("model", "text_cache_dir"))


def _anchor(value: Any, base: Path) -> Any:
    """A relative file path made absolute against `base`; templates ({state_dir}/...), "", URLs left alone."""
    if not isinstance(value, str) or not value or value.startswith("{") or "://" in value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else os.path.normpath(base / p))


def _anchor_endpoint(ep: Any, base: Path) -> Any:
    if isinstance(ep, str) and ep.startswith("ipc://") and not ep[len("ipc://"):].startswith("@"):
        return "ipc://" + _anchor(ep[len("ipc://"):], base)
    return ep


def resolve_file_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A config file's relative paths (file keys, ipc endpoints, file outputs) against the file's directory."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key in _FILE_KEYS:
        node = out
        for part in key[:-1]:
            node = node.get(part) if isinstance(node.get(part), dict) else {}
        if key[-1] in node:
            node[key[-1]] = _anchor(node[key[-1]], base)
    ingest = out.get("ingest")
    if isinstance(ingest, dict):
        for k in ("control", "events"):
            if isinstance(ingest.get(k), list):
                ingest[k] = [_anchor_endpoint(ep, base) for ep in ingest[k]]
    if isinstance(out.get("outputs"), list):
        out["outputs"] = [{**o, "url": _anchor(o["url"], base)} if isinstance(o, dict) and "url" in o else o
                          for o in out["outputs"]]
    return out


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        value = e.get("input")
        shown = "<missing>" if e["type"] == "missing" else repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {loc} = {shown}: {e['msg']}")
    return "\n".join(lines)


def load_settings(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build Settings from a TOML file, FLASHTALK_LIVE_* variables and KEY=VALUE overrides, in rising priority."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: not valid TOML: {e}") from None
        data = resolve_file_paths(data, p.resolve().parent)
        source = str(p)
    env = os.environ if environ is None else environ
    data = _deep_merge(data, _env_tree(dict(env)))
    for item in overrides or []:
        data = _deep_merge(data, parse_override(item))
    try:
        return Settings(**data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


_SECRET_URL = re.compile(r"^(?P<scheme>rtmps?|srt|https?)://(?P<rest>.*)$")


def mask_url(url: str) -> str:
    """Hide RTMP stream keys, credentials and query tokens: rtmp://host/app/****."""
    m = _SECRET_URL.match(url)
    if not m:
        return url
    rest = m.group("rest")
    rest = re.sub(r"^[^@/]*@", "***@", rest)  # user:password@
    host, _, path = rest.partition("/")
    if not path:
        return f"{m.group('scheme')}://{host}"
    segments = path.split("/")
    app = segments[0].split("?")[0]
    masked = "/".join([app] + ["****"] * max(1, len(segments) - 1))
    return f"{m.group('scheme')}://{host}/{masked}"


def masked_dump(settings: Settings) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    for out in data.get("outputs", []):
        out["url"] = mask_url(out["url"])
    return data
