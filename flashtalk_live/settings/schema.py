"""The settings schema: the room's 15 sections, each a pydantic model with its defaults and its own checks, and
`Settings`, the whole daemon, with the checks across sections and the values derived from them.

Adding a section is one `_Section` model here and its field on `Settings` (configs/default.toml documents it).
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from flashtalk_live.secrets import mask_url

ENV_PREFIX = "FLASHTALK_LIVE_"
# The demo programme (README: a plain `flashtalk-live run` airs it): playlists/ of the repository, package data
# through the link flashtalk_live/assets/playlists, so an installed (non-editable) package has it too.
DEMO_PLAYLIST = Path(__file__).resolve().parents[1] / "assets" / "playlists" / "example.m3u"


def default_state_dir() -> str:
    """$XDG_STATE_HOME/flashtalk-live (~/.local/state/flashtalk-live): where `run` and the CLI verbs meet by default,
    whatever their current directories."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "flashtalk-live")


def default_playlist() -> str | None:
    return str(DEMO_PLAYLIST) if DEMO_PLAYLIST.is_file() else None


# A room's name goes into paths ({room} in state_dir): no separators, nothing a shell or systemd would mangle.
ROOM_NAME = r"^([A-Za-z0-9_.@+=:-]{1,64})?$"


def room_from_config(path: str | os.PathLike[str]) -> str:
    """The room a config file describes by default: its name without the extension, as systemd's
    flashtalk-live@NAME reads /etc/flashtalk-live/NAME.toml; characters a name may not hold become "_"."""
    name = re.sub(r"[^A-Za-z0-9_.@+=:-]", "_", Path(path).stem)[:64]
    return "" if name in (".", "..") else name


# What libx264 (through PyAV) accepts; checked at load so `config show` and `run` agree (x264 ignores case).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo")
X264_PSY_TUNES = ("film", "animation", "grain", "stillimage", "psnr", "ssim")  # at most one of these
X264_TUNES = X264_PSY_TUNES + ("fastdecode", "zerolatency", "touhou")
NVENC_PRESETS = tuple(f"p{i}" for i in range(1, 8))



class _Section(BaseModel):
    # hide_input_in_errors: pydantic's own messages never echo a value (it may hold a stream key).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


SectionT = TypeVar("SectionT", bound=_Section)


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
    # -- authentication and trust (flashtalk_live/ingest/auth.py; docs/protocol.md "Authentication and limits") --
    tcp_auth: Literal["curve", "none"] = Field("curve", description="security of every tcp:// endpoint")
    server_key: str = Field("{state_dir}/keys/server.key_secret",
                            description="the server's CURVE secret certificate; made at first start when missing")
    client_keys_dir: str | None = Field("{state_dir}/keys/clients",
                                        description="public certificates of the clients allowed over CURVE")
    client_keys: list[str] = Field(default_factory=list, description="more allowed client public keys (Z85)")
    trusted_client_keys: list[str] = Field(
        default_factory=list, description="CURVE client public keys (Z85) that may touch the server (implies allowed)")
    allow_unauthenticated_remote: bool = Field(
        False, description="UNSAFE: allow tcp_auth='none' on an address beyond loopback (warned at every start)")
    ipc_trusted: bool = Field(True, description="ipc:// peers may touch the server (socket permissions guard them)")
    ipc_mode: int = Field(0o660, ge=0, le=0o777, description="file mode of ipc:// socket files")
    ipc_group: str | None = Field(None, description="group owning ipc:// socket files")
    avatar_dirs: list[str] = Field(default_factory=list,
                                   description="server folders a trusted peer's set_avatar may name files in")
    # -- limits (flashtalk_live/ingest/limits.py) --
    max_image_bytes: int = Field(16 * 1024 * 1024, gt=0, description="set_avatar image size")
    max_image_pixels: int = Field(25_000_000, gt=0, description="set_avatar width x height, read from the header")
    max_prompt_chars: int = Field(2000, gt=0)
    max_text_chars: int = Field(500, gt=0, description="a clip's caption `text` and overlay_set text (text_too_long)")
    max_id_chars: int = Field(200, ge=1, le=200, description="request ids, segment ids and output names")
    max_meta_depth: int = Field(32, ge=1, le=200, description="nesting of a clip's `meta` (meta_too_deep), checked "
                                "before the spool commits the clip")
    max_caption_chars: int = Field(5000, ge=1, description="a clip's caption characters in all: `text` plus every "
                                   "`captions` cue's text (captions_too_long)")
    rate_per_s: float = Field(50.0, ge=0, description="requests per second per peer (0: no limit)")
    rate_burst: int = Field(100, ge=1, description="requests a peer may send at once before rate_per_s applies")
    workers: int = Field(4, ge=1, le=64, description="threads that decode and handle requests")
    max_inflight_per_peer: int = Field(16, ge=1, description="requests of one peer waiting or running")
    max_inflight: int = Field(256, ge=1, description="requests of all peers waiting or running")
    handshake_timeout_s: float = Field(5.0, gt=0, description="ZMQ_HANDSHAKE_IVL: a connection must finish its handshake in this time")
    connection_backlog: int = Field(64, ge=1, description="ZMQ_BACKLOG: pending tcp connections")
    max_connections: int = Field(256, ge=1, description="open tcp connections per socket (control, events); more "
                                                        "are closed at once, so a flood cannot take every descriptor")
    heartbeat_s: float = Field(10.0, gt=0, description="ZMQ_HEARTBEAT_IVL: ping every connection this often")
    log_interval_s: float = Field(10.0, gt=0, description="refused handshakes and rejected requests: at most "
                                  "log_burst lines per code in this interval, then one line with the count")
    log_burst: int = Field(5, ge=0, description="lines per code and log_interval_s before they are only counted")
    heartbeat_timeout_s: float = Field(30.0, gt=0, le=6553, description="ZMQ_HEARTBEAT_TIMEOUT/TTL: drop a peer silent this long (libzmq caps the TTL at 6553 s)")

    @field_validator("ipc_mode", mode="before")
    @classmethod
    def _octal(cls, v: Any) -> Any:
        return int(v, 8) if isinstance(v, str) else v  # "0660" from the environment


class QueueSettings(_Section):
    """The durable spool of acknowledged clips."""

    spool_dir: str = "{state_dir}/spool"
    max_clips: int = Field(2000, gt=0)
    max_queued_seconds: float = Field(4 * 3600.0, gt=0)
    max_spool_bytes: int = Field(8 * 1024**3, gt=0)


class StreamSettings(_Section):
    """Streamed clips (clip_open / clip_append / clip_close: flashtalk_live/queue/streams.py)."""

    max_open: int = Field(16, ge=1, description="open streams in all (too_many_streams)")
    max_open_per_peer: int = Field(4, ge=1, description="open streams of one peer (too_many_streams)")
    max_stream_bytes: int = Field(64 * 1024**2, gt=0, description="bytes one stream may append (stream_too_large)")
    idle_timeout_s: float = Field(10.0, gt=0, description="an open stream with no append for this long is closed as "
                                  "cut (event `interrupted`, reason stream_timeout); also after a restart")
    prebuffer_s: float = Field(0.4, ge=0, description="seconds of audio past the first chunk a stream must have "
                               "received (or be closed) before it starts on air: the producer's jitter allowance")
    due_margin_s: float = Field(0.2, ge=0, description="a chunk of a stream whose audio has not all arrived is cut "
                                "(the rest a pause inside the clip) once the air is this close to needing it, beyond "
                                "one chunk's render time")


class StorageSettings(_Section):
    """The disk under the state directory: below the watermark the room stays on air but refuses new clips."""

    min_free_bytes: int = Field(256 * 1024**2, ge=0, description="degraded below this many free bytes")
    min_free_percent: float = Field(1.0, ge=0, le=100, description="degraded below this share of the disk free")
    check_interval_s: float = Field(1.0, gt=0)
    spool_reserve_bytes: int = Field(16 * 1024**2, ge=0, description="kept free for clips already acknowledged")


class ProgrammeSettings(_Section):
    """What plays when the queue is empty."""

    playlist: str | None = Field(default_factory=default_playlist,
                                 description='M3U or TOML playlist (default: the demo programme); "" means idle silence')
    shuffle: bool = False
    pause_seconds: float = Field(0.0, ge=0, description="silence between programme clips")
    resume_after_queue_s: float = Field(
        0.0, ge=0, le=60, description="after a queue clip ends, the programme resumes only once this many seconds "
        "have passed (idle meanwhile), so a reply pushed or opened just then starts at once instead of waiting "
        "behind a whole programme item; 0: at once")
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
    lead_in_frames: tuple[int, ...] = Field(
        (), description="a queue clip that starts on a chunk's first frame (into an idle room, play_now) is cut into "
        "shorter chunks of these lengths first, then chunk_frames: a short first chunk renders and airs sooner. "
        "The admission orders the lengths into the ramp with the shortest planned head start from their measured "
        "times (a length may repeat; status.render_ahead.lead_in_ramp). FlashTalk: each length its own compiled "
        "shape; multiples of 4 below chunk_frames, listed not falling; empty: off")
    reference_image: str | None = Field(None, description="portrait; none uses the embedded demo portrait")
    fit: Literal["cover", "contain"] = "cover"
    prompt: str = "A person is talking to the camera in a live-commerce studio."

    @field_validator("width", "height")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"must be even for yuv420p, got {v}")
        return v

    @model_validator(mode="after")
    def _lead_in(self) -> "VideoSettings":
        lead = self.lead_in_frames
        if any(n <= 0 or n % 4 or n >= self.chunk_frames for n in lead) or list(lead) != sorted(lead):
            raise ValueError(f"lead_in_frames {list(lead)}: multiples of 4 below chunk_frames {self.chunk_frames} "
                             "(the causal VAE groups 4 frames), listed not falling")
        return self


class RendererSettings(_Section):
    """Which renderer draws the avatar and how far it may run ahead."""

    kind: str = Field("still", description="a renderer kind of renderers/kinds.py (checked by that table)")

    lookahead_chunks: int = Field(3, ge=1, le=32, description="rendered chunks buffered ahead of the encoder while "
                                  "no clip waits for a head start (the base of the render-ahead buffer)")
    fallback_retry_initial_s: float = Field(5.0, gt=0)
    fallback_retry_max_s: float = Field(300.0, gt=0)
    deadline_factor: float = Field(
        2.5, gt=1, description="an engine chunk not done after this many times max(its duration, the engine's typical "
        "chunk time) counts as failed (a hang); for an engine at real time keep it below lookahead_chunks so the still "
        "renderer takes over before the buffer runs dry")
    lookahead_s: float = Field(
        60.0, ge=0, le=600, description="render-ahead budget: how many seconds of frames may be buffered while a "
        "queue clip waits for enough head start to air without a stall (docs/broadcast.md, render ahead): the "
        "render-ahead buffer's bound in seconds (never below lookahead_chunks)")
    lookahead_ram_bytes: int = Field(
        512 * 1024**2, ge=0, description="render-ahead frames kept in RAM (YUV 4:2:0: 1.5 bytes a pixel); past this "
        "many bytes whole chunks spill to lookahead_spill_dir. A spill that fails keeps the chunk in RAM (logged)")
    lookahead_spill_dir: str = Field("{state_dir}/render-ahead", description="spill files of the render-ahead "
                                     "buffer; emptied at start and stop")
    lookahead_compact: bool = Field(True, description="hold render-ahead frames as YUV 4:2:0 (half the bytes of "
                                    "RGB, about 1 ms of CPU a 448x768 frame); false: RGB")
    admission_margin: float = Field(
        0.25, ge=0, le=5, description="safety margin on the measured render rate when deciding whether a clip "
        "can start (0.25: plan as if the renderer were 25% slower than measured)")
    replan_within_chunk: bool = Field(
        True, description="an edit (enqueue into idle, play_now, insert...) re-plans from the first frame that can "
        "still be rendered in time, cutting a buffered or airing chunk short, instead of from the next chunk "
        "boundary (up to one chunk sooner on air); false: chunk boundaries only")
    idle_reuse: bool = Field(
        True, description="while the renderer is slower than real time, idle chunks replay the last rendered idle "
        "chunk (forwards, then backwards) instead of rendering, so the renderer's time goes to clips")
    idle_bank: bool = Field(
        True, description="idle airs from a bank of silent chunks the preferred renderer drew of this avatar "
        "(built at warm-up and in spare render time, cached under {state_dir}/idlebank): idle costs no GPU")
    idle_bank_chunks: int = Field(8, ge=1, le=256, description="chunks in the idle bank (the loop's length; "
                                  "each is chunk_frames x width x height x 3 bytes in RAM)")
    idle_bank_disk_bytes: int = Field(
        2 << 30, ge=0, description="cap on {state_dir}/idlebank; other avatars' banks are evicted first, oldest "
        "first; 0 keeps the bank in RAM only")
    idle_bank_crossfade_frames: int = Field(4, ge=0, le=50, description="frames dissolved from the last aired "
                                            "frame into the bank chunk that follows a clip")
    face_motion: bool = Field(
        True, description="the still renderer (the default and every engine's fallback) opens the mouth with the "
        "speech it airs, blinks and sways a little (renderers/face.py); false: a motionless portrait")
    mouth_box: list[float] | None = Field(
        None, min_length=4, max_length=4, description="[x, y, width, height] of the mouth in pixels of "
        "video.reference_image, for face_motion; none: the embedded demo portrait's box [216, 426, 80, 28] "
        "scaled to the portrait's size")

    @field_validator("mouth_box")
    @classmethod
    def _mouth_box(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (v[2] <= 0 or v[3] <= 0 or v[0] < 0 or v[1] < 0):
            raise ValueError("expected [x, y, width, height] in the portrait's pixels: x, y >= 0, a positive size")
        return v

    gil_switch_interval_s: float = Field(
        0.0005, gt=0, le=0.1, description="Python's thread switch interval in the daemon (sys.setswitchinterval): "
        "the longest the engine's thread keeps the interpreter while the broadcast thread waits for it. Python's "
        "5 ms starves the broadcast thread, which takes the interpreter back dozens of times a frame, while the "
        "engine loads or compiles (the air froze and re-anchored; docs/broadcast.md, the broadcast's share)")
    drill_slowdown: float = Field(
        1.0, ge=1, le=20, description="drill: every render call takes this many times max(its own time, the "
        "chunk's duration); 1 = off. Proves the room copes with a slow renderer without a slow GPU")
    drill_jitter_s: float = Field(0.0, ge=0, le=10, description="drill: add a random 0..this many seconds to every "
                                  "render call; 0 = off")


class ModelSettings(_Section):
    """FlashTalk weights, profile and numerics."""

    weights_dir: str | None = Field(None, description="SoulX-FlashTalk-14B folder")
    wav2vec_dir: str | None = Field(None, description="chinese-wav2vec2-base folder")
    profile: str = Field("quality", description='quality, native, fast, realtime, a .toml file, or "auto": measure '
                         "model.auto_candidates at warm-up and run the best quality that keeps real time")
    auto_candidates: list[str] = Field(
        default_factory=lambda: ["quality", "native", "fast", "realtime"],
        description='"auto": profiles to measure, best quality first (names or .toml files, same new frames per chunk)')
    auto_margin: float = Field(0.15, ge=0, lt=1, description='"auto": a profile fits when its p90 chunk time is at '
                               "most (1 - margin) x the chunk's duration, and at most 1 / (1 + "
                               "renderer.admission_margin) x it (the play-out's planning rate below real time)")
    auto_chunks: int = Field(3, ge=1, le=50, description='"auto": timed warm chunks per candidate (after one untimed)')
    auto_compiled_ratio: float = Field(
        0.42, gt=0, le=2, description='"auto" with compile = true: candidates are timed eager (no compile) and '
        "predicted at eager x this ratio (0.41-0.42 measured on an H100: docs/performance.md); only the one "
        "predicted to fit is compiled and timed again, and a miss corrects the ratio (docs/engine.md)")
    random_weights: Literal["off", "full", "tiny"] = Field(
        "off", description="benchmarks only (FLASHTALK_LIVE_BENCHMARK=1): random weights of the full-size or tiny "
        "model family instead of a release; the picture is noise")
    device: str = "cuda"
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    attention: Literal["sdpa", "cudnn", "flash"] = Field(
        "sdpa", description='sdpa: torch SDPA in its default kernel order; cudnn: SDPA with cuDNN attention first '
        '(for torch versions whose default tries FlashAttention-2 first); flash: the flash-attn package')
    compile: bool = Field(False, description="torch.compile the DiT blocks at start-up (slower warm-up, faster chunks)")
    vae_latents_per_pass: int = Field(0, ge=0, description="latent frames per VAE decoder/encoder pass; 0: a whole "
                                      "chunk in one pass (fastest; more activation memory), 1: the reference's loop")
    vae_channels_last: bool = Field(True, description="channels-last 3-D layout for the VAE convs (CUDA only)")
    vae_compile: bool = Field(False, description="torch.compile the VAE encoder and decoder at start-up")
    decoder: Literal["wan", "taehv"] = Field("wan", description="latents -> frames: the Wan VAE (exact) or the "
                                             "TAEHV tiny decoder (much faster, approximate; docs/engine.md)")
    taehv_path: str | None = Field(None, description="tiny decoder file (taew2_1 .safetensors/.pth) "
                                   "or its folder; default: taehv/ beside weights_dir (`models download --only taehv`)")
    quantize: Literal["none", "fp8"] = Field(
        "none", description="fp8: DiT block linears in float8 e4m3 (CUDA compute capability >= 8.9; else bf16, with a warning)")
    fp8_keep_bf16_blocks: tuple[int, int] = Field(
        (2, 3), description="(first, last) DiT blocks left unquantised when quantize = fp8")
    fp8_backend: Literal["scaled_mm", "torchao"] = Field(
        "scaled_mm", description="fp8 matmuls: torch._scaled_mm (built in) or torchao's float8 rowwise config")
    fp8_fast_accum: bool = Field(False, description="scaled_mm backend: _scaled_mm's use_fast_accum (fp8 partial "
                                 "sums not promoted to float32; faster, less exact: docs/performance.md)")
    abandon_run_ahead_blocks: int = Field(0, ge=0, description="a chunk a re-plan abandons stops: 0, at its next "
                                          "denoising step; N, between DiT blocks, the host kept at most N blocks "
                                          "ahead of the GPU (one GPU, cuda_graphs off; not measured on a GPU yet)")
    park_context_projections: bool = Field(
        True, description="one GPU: the DiT's context projections (text/image keys and values, about 4.7 GB of the "
        "14B in fp8) wait in pinned host memory between session starts, which copy them in once; a steady chunk "
        "reads only the session's cached keys and values (an H100 room at realtime, cf3863e: 25.4 GiB by nvidia-smi "
        "against 28.5 GiB resident, chunk times unchanged: docs/performance.md)")
    cuda_graphs: bool = Field(False, description="with compile = true: compile the DiT blocks in mode "
                              '"reduce-overhead" (CUDA graphs replayed per block at the fixed chunk shapes)')
    compile_cache_dir: str = Field("{state_dir}/compile-cache", description="torch.compile's inductor cache (FX "
                                   "graphs, autotuning, Triton kernels) kept across restarts: TORCHINDUCTOR_CACHE_DIR; "
                                   '"" leaves torch\'s default (/tmp/torchinductor_<user>). "auto" keeps its '
                                   "measurements here too (auto-profile.json; delete it to measure again)")
    cuda_alloc_conf: str = Field(
        "expandable_segments:True", description="PYTORCH_CUDA_ALLOC_CONF for a one-GPU room's engine, unless the "
        "environment sets it: expandable segments leave the allocator less reserved beyond what it holds (an H100 "
        "room at realtime, measured by nvidia-smi at bba65b2, two runs); "
        '"" for torch\'s default')
    text_cache_dir: str = "{state_dir}/text-cache"
    text_device: Literal["cpu", "model"] = Field(
        "cpu", description='where umT5-XXL encodes a prompt missing from the text cache: "cpu" (host memory, about '
        '11 GiB while it runs; the GPU never holds it) or "model" (model.device: faster, a 10.6 GiB GPU transient)')
    gpus: int | list[int] = 1
    # Drift control (docs/engine.md argues the defaults).
    drift_every_chunks: int = Field(1, ge=1, description="measure identity/colour drift every N chunks")
    drift_identity_min: float = Field(0.80, ge=-1, le=1, description="CLIP cosine to the reference below this is drift")
    drift_colour_max: float = Field(12.0, gt=0, description="Lab distance of the raw decoded frame above this is drift")
    drift_patience_chunks: int = Field(2, ge=1, description="consecutive drifting measures before an early re-anchor")
    recalibrate_interval_s: float = Field(600.0, ge=0, description="scheduled re-anchor every N s of output (0: off)")
    recalibrate_max_wait_s: float = Field(60.0, ge=0, description="re-anchor even in speech when no idle chunk came this long after it was due")
    recalibrate_crossfade_frames: int = Field(6, ge=0, description="dissolve from the last shown frame after a re-anchor")


    @field_validator("fp8_keep_bf16_blocks")
    @classmethod
    def _non_negative(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 0:
            raise ValueError(f"block counts must be >= 0, got {list(v)}")
        return v


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

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        low = v.strip().lower()
        if low not in X264_PRESETS + NVENC_PRESETS:
            raise ValueError(f"unknown preset; expected one of {', '.join(X264_PRESETS)} (or p1..p7 with h264_nvenc)")
        return low

    @field_validator("tune")
    @classmethod
    def _tune(cls, v: str | None) -> str | None:
        if v is None:
            return v
        tunes = [t.strip().lower() for t in v.split(",") if t.strip()]
        bad = [t for t in tunes if t not in X264_TUNES]
        if bad:
            raise ValueError(f"unknown tune {', '.join(bad)}; expected a comma list of {', '.join(X264_TUNES)}")
        if len([t for t in tunes if t in X264_PSY_TUNES]) > 1:
            raise ValueError(f"at most one of {', '.join(X264_PSY_TUNES)} (x264 ignores the others)")
        return ",".join(tunes) or None


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
            raise ValueError(f"output name must be 1-64 of [A-Za-z0-9_.-], got {mask_url(v, strict=True)!r}")
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
    max_outputs: int = Field(8, ge=1, description="outputs at once, configured and added at run time")
    file_dirs: list[str] = Field(default_factory=lambda: ["{state_dir}/recordings"],
                                 description="folders output_add may write files in")
    recording_max_age_hours: float = Field(24.0 * 7, ge=0, description="a file output's older files are deleted (0: kept)")
    recording_max_bytes: int = Field(20 * 1024**3, ge=0,
                                     description="a file output's files beyond this total are deleted, oldest first "
                                                 "(0: no limit)")


Anchor = Literal["top_left", "top", "top_right", "left", "center", "right", "bottom_left", "bottom", "bottom_right"]
LAYER_NAME = r"[A-Za-z0-9_.-]{1,64}"


class LayerSettings(_Section):
    """One on-air layer: a text or an image, placed by anchor and margins (docs/overlays.md)."""

    name: str = Field(pattern=f"^{LAYER_NAME}$", description="what overlay_show/hide/set call it")
    text: str | None = Field(None, description="text to draw (or image)")
    image: str | None = Field(None, description="PNG/JPEG/WebP file, alpha kept (or text)")
    anchor: Anchor = "top_left"
    margin: tuple[int, int] = Field((16, 16), description="px from the anchored edges: (x, y)")
    in_safe_area: bool = Field(True, description="anchored inside overlays.safe_area (false: the whole frame, e.g. a "
                               "full-frame watermark)")
    width: int | None = Field(None, gt=0, description="image: scaled to this width; text: wrapped at it "
                              "(default: the frame's width less both margins)")
    font_size: int = Field(28, gt=0, le=400)
    colour: tuple[int, int, int] = (255, 255, 255)
    outline: int = Field(2, ge=0, le=20, description="px of dark outline around text")
    box: tuple[int, int, int, int] | None = Field(None, description="RGBA box behind text, e.g. [0, 0, 0, 140]")
    opacity: float = Field(1.0, ge=0, le=1)
    fade_s: float = Field(0.3, ge=0, le=10, description="fade in and out when shown or hidden")
    visible: bool = Field(True, description="false: defined but off air until overlay_show")

    @model_validator(mode="after")
    def _one_source(self) -> "LayerSettings":
        if (self.text is None) == (self.image is None):
            raise ValueError(f"overlay layer {self.name!r}: exactly one of text and image")
        return self


def _ai_label() -> LayerSettings:
    return LayerSettings(name="ai_label", text="AI生成", anchor="top_right", margin=(16, 16), font_size=24,
                         outline=0, box=(0, 0, 0, 150), fade_s=0.0)


class OverlaySettings(_Section):
    """What the viewer sees besides the face: drawn on every aired frame, whatever the renderer."""

    ai_label_enabled: bool = Field(True, description="the AI-generated-content label; platforms require it for "
                                   "virtual hosts: turning it off is logged at every start")
    ai_label: LayerSettings = Field(default_factory=_ai_label, description="its text, position and look")
    font: str | None = Field(None, description="font file (.ttf/.otf/.ttc, `path#N` for face N); default: Noto "
                             "Sans CJK from fonts-noto-cjk, found in font_dirs")
    font_dirs: list[str] = Field(default_factory=lambda: ["/usr/share/fonts", "/usr/local/share/fonts"],
                                 description="where the default font is looked for; with none found, captions and "
                                 "text layers draw with the package's label font (ASCII and the AI labels' characters: "
                                 "warned at start) and the AI label airs all the same")
    layers: list[LayerSettings] = Field(default_factory=list, description="logo, watermark, cards, in drawing order")
    captions: bool = Field(True, description="show a clip's `text` while it airs")
    caption_font_size: int = Field(30, gt=0, le=200)
    caption_margin: int = Field(120, ge=0, description="px above the bottom edge (clear of the platform's UI)")
    caption_box: tuple[int, int, int, int] | None = Field((0, 0, 0, 120), description="RGBA box behind captions")
    max_layers: int = Field(32, ge=1, description="layers at once, configured and uploaded (too_many_layers)")
    # -- what text may cost, measured before anything is rasterised (compose/compositor.py) --
    max_caption_pixels: int = Field(4_000_000, gt=0, description="a clip's caption lines, rendered, in pixels "
                                    "(captions_too_large); measured at ingest before the clip is queued")
    caption_budget_bytes: int = Field(256 * 1024**2, gt=0, description="memory of the caption lines of every clip "
                                      "queued and not yet aired (captions_over_budget): a byte budget, not a count")
    max_layer_pixels: int = Field(4_194_304, gt=0, description="an overlay text layer's wrapped text, rendered, in "
                                  "pixels (text_too_large); measured before it is rasterised")
    safe_area: tuple[float, float, float, float] = Field(
        (0.0, 0.0, 0.0, 0.0), description="(top, right, bottom, left) shares of the frame that layers and captions "
        "keep clear of (the platform's own buttons, comments and title bar); the shipped configs set a 9:16 "
        "portrait area")

    @field_validator("safe_area")
    @classmethod
    def _safe_area(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        top, right, bottom, left = v
        if min(v) < 0 or top + bottom >= 0.9 or left + right >= 0.9:
            raise ValueError(f"safe_area {v}: shares must be >= 0 and leave at least 10 % of the frame each way")
        return v


class MetricsSettings(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    max_connections: int = Field(16, ge=1, description="connections served at once; more are closed at accept")
    timeout_s: float = Field(5.0, gt=0, description="an idle or slow scraper is dropped after this long")


class ConsoleSettings(_Section):
    """The operator console (flashtalk_live/console/), served with /metrics on metrics.host:metrics.port."""

    enabled: bool = True
    token: SecretStr | None = Field(None, description="bearer token for state-changing requests (and required for "
                                                      "a non-loopback metrics.host); or token_file")
    token_file: str | None = Field(None, description="a file holding the token; when neither is set, a random "
                                                     "token is written to {state_dir}/console.token (mode 0600)")
    preview_fps: float = Field(5.0, gt=0, le=30, description="most JPEG encodes of the air per second, all viewers "
                                                             "together")
    preview_width: int = Field(320, ge=16, le=3840, description="preview width in pixels (height keeps the aspect)")
    event_history: int = Field(200, ge=1, le=10_000, description="recent events kept for /api/events")
    max_connections: int = Field(128, ge=4, le=4096, description="connections open at once, reading a request or "
                                 "being answered; more are closed when accepted")
    read_deadline_s: float = Field(5.0, gt=0, le=300, description="a request's line, headers and body must all "
                                   "arrive within this time (it does not restart with each byte)")
    probe_connections: int = Field(16, ge=1, le=1024, description="/metrics and /api/health answered at once")
    api_connections: int = Field(16, ge=1, le=1024, description="the page and the API answered at once; one more "
                                 "is kept for a request that carries the token (the operator always gets in)")
    preview_clients: int = Field(4, ge=1, le=64, description="/preview.jpg and /preview.mjpeg answered at once")
    event_stream_clients: int = Field(8, ge=1, le=64, description="most open /api/events/stream connections; one "
                                      "more is refused with 503 `busy` (each holds one of metrics.max_connections)")
    health_interval_s: float = Field(10.0, ge=0.05, le=3600, description="seconds between two samples of the health "
                                     "history (/api/health)")
    health_history_s: float = Field(6 * 3600.0, gt=0, le=7 * 86400, description="how far back /api/health reaches")


class ProbeSettings(_Section):
    """The health probes a scheduler polls (flashtalk_live/probes.py: /livez, /readyz, /startupz), served with
    /metrics on metrics.host:metrics.port, no token."""

    live_stall_s: float = Field(30.0, gt=0, le=3600, description="/livez answers 503 once no frame has gone out for "
                                "this long (the broadcast loop stalled; the same signal feeds systemd's watchdog)")
    ready_fallback_s: float = Field(600.0, ge=0, le=86400, description="/readyz: a room whose configured renderer is "
                                    "not on air (loading, failed) is ready on the still fallback after this long")


class LoggingSettings(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"
    health_interval_s: float = Field(60.0, ge=0, description="every this many seconds one `health` line: state, "
                                     "clip on air, renderer, buffered seconds, underruns, outputs up; 0 = never")


class Settings(BaseSettings):
    """The whole daemon."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True,
        hide_input_in_errors=True,
    )

    room: str = Field("", pattern=ROOM_NAME, description="the room's name (flashtalk-live@NAME sets it): `{room}` in "
                      "state_dir; default: the config file's name without .toml (roomA.toml: roomA), else none")
    state_dir: str = Field(default_factory=default_state_dir,
                           description="spool, sockets, recordings; made absolute (a relative path: against the "
                                       "config file's directory, else the current one); `{room}` is the room's name")
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    programme: ProgrammeSettings = Field(default_factory=ProgrammeSettings)
    video: VideoSettings = Field(default_factory=VideoSettings)
    renderer: RendererSettings = Field(default_factory=RendererSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    encoder: EncoderSettings = Field(default_factory=EncoderSettings)
    outputs: list[OutputSettings] = Field(
        default_factory=lambda: [OutputSettings(name="recording", url="{state_dir}/recordings/live-%Y%m%d-%H%M%S.flv", segment_seconds=3600)]
    )
    output_policy: OutputPolicy = Field(default_factory=OutputPolicy)
    overlays: OverlaySettings = Field(default_factory=OverlaySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    probes: ProbeSettings = Field(default_factory=ProbeSettings)
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

    @field_validator("room")
    @classmethod
    def _not_dots(cls, v: str) -> str:
        if v in (".", ".."):
            raise ValueError("a room's name cannot be . or .. (it names a folder)")
        return v

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return os.path.abspath(os.path.expanduser(v))

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if "{room}" in self.state_dir:
            if not self.room:
                raise ValueError(f"state_dir {self.state_dir!r} names {{room}} but no room is named; set room "
                                 "(FLASHTALK_LIVE_ROOM, --set room=NAME) or load the config from a file (its name "
                                 "is the room's)")
            self.state_dir = self.state_dir.replace("{room}", self.room)
        if self.encoder.preset in NVENC_PRESETS and self.encoder.video_codec != "h264_nvenc":
            raise ValueError(f"encoder.preset {self.encoder.preset!r} is an NVENC preset; with video_codec "
                             f"{self.encoder.video_codec!r} expected one of {', '.join(X264_PRESETS)}")
        if self.encoder.audio_rate % self.video.fps:
            raise ValueError(
                f"encoder.audio_rate {self.encoder.audio_rate} must be a whole number of samples per frame at video.fps {self.video.fps}"
            )
        names = [o.name for o in self.outputs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"outputs: duplicate names {sorted(dup)}")
        if self.metrics.enabled and self.console.enabled and not self.console.token \
                and not self.console.token_file and not is_loopback_host(self.metrics.host):
            raise ValueError(f"console: metrics.host {self.metrics.host!r} is not loopback; set console.token or "
                             f"console.token_file (or console.enabled = false)")
        if len(self.outputs) > self.output_policy.max_outputs:
            raise ValueError(f"outputs: {len(self.outputs)} configured, over output_policy.max_outputs "
                             f"{self.output_policy.max_outputs}")
        return self

    # -- derived values ------------------------------------------------------------------------
    def path(self, template: str) -> str:
        """Expand {state_dir} in a configured path or endpoint."""
        return template.replace("{state_dir}", str(Path(self.state_dir).expanduser()))

    def expanded(self, section: SectionT) -> SectionT:
        """`section` with {state_dir} expanded in its strings and lists of strings: what a part is handed, so that
        no part needs the whole Settings to find its files and endpoints."""
        update: dict[str, Any] = {}
        for name in type(section).model_fields:
            v = getattr(section, name)
            if isinstance(v, str) and "{state_dir}" in v:
                update[name] = self.path(v)
            elif isinstance(v, list) and any(isinstance(x, str) and "{state_dir}" in x for x in v):
                update[name] = [self.path(x) if isinstance(x, str) else x for x in v]
        return section.model_copy(update=update) if update else section

    @property
    def samples_per_frame(self) -> int:
        return self.encoder.audio_rate // self.video.fps


def is_loopback_host(host: str) -> bool:
    """True for a loopback address or "localhost" (what a bind to it can be reached from: this machine only)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
