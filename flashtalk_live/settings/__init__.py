"""The daemon's one typed configuration: the schema, and the pieces that turn configuration text into it.

A leaf: no module of this package imports anything of flashtalk_live but `secrets` (and its own modules). What only a
registry knows (renderer kinds, output kinds, model profiles) is checked by that registry after the schema has
validated: `config.load_settings` runs both.

* `schema.py`: the 15 sections and `Settings` (adding a section: one model there and its field on `Settings`).
* `sources.py`: the environment, `--set` overrides and a file's relative paths as data; the TOML reader; the
  benchmark-only gate.
* `display.py`: configuration errors as masked lines, and the masked dump of `config show`.

Every name is imported from here (`from flashtalk_live.settings import Settings`), not from the modules.
"""

from __future__ import annotations

from flashtalk_live.settings.display import (
    error_line,
    format_error_lines,
    format_validation_error,
    masked_dump,
    secret_field,
    unknown_key_hint,
    validation_error_lines,
)
from flashtalk_live.settings.schema import (
    DEMO_PLAYLIST,
    ENV_PREFIX,
    LAYER_NAME,
    NVENC_PRESETS,
    ROOM_NAME,
    X264_PRESETS,
    X264_PSY_TUNES,
    X264_TUNES,
    ConsoleSettings,
    EncoderSettings,
    IngestSettings,
    LayerSettings,
    LoggingSettings,
    MetricsSettings,
    ModelSettings,
    OutputPolicy,
    OutputSettings,
    OverlaySettings,
    ProbeSettings,
    ProgrammeSettings,
    QueueSettings,
    RendererSettings,
    SectionT,
    Settings,
    StorageSettings,
    StreamSettings,
    VideoSettings,
    default_playlist,
    default_state_dir,
    is_loopback_host,
    room_from_config,
)
from flashtalk_live.settings.sources import (
    BENCHMARK_ENV,
    CONFIG_ENV,
    OUTPUT_URL_ENV,
    ConfigError,
    benchmark_mode,
    check_benchmark_only,
    deep_merge,
    env_tree,
    loads_toml,
    parse_override,
    read_toml,
    resolve_file_paths,
    resolve_path,
)

__all__ = [
    "BENCHMARK_ENV",
    "benchmark_mode",
    "check_benchmark_only",
    "CONFIG_ENV",
    "ConfigError",
    "ConsoleSettings",
    "deep_merge",
    "default_playlist",
    "default_state_dir",
    "DEMO_PLAYLIST",
    "EncoderSettings",
    "ENV_PREFIX",
    "env_tree",
    "error_line",
    "format_error_lines",
    "format_validation_error",
    "IngestSettings",
    "is_loopback_host",
    "LAYER_NAME",
    "LayerSettings",
    "loads_toml",
    "LoggingSettings",
    "masked_dump",
    "MetricsSettings",
    "ModelSettings",
    "NVENC_PRESETS",
    "OUTPUT_URL_ENV",
    "OutputPolicy",
    "OutputSettings",
    "OverlaySettings",
    "parse_override",
    "ProbeSettings",
    "ProgrammeSettings",
    "QueueSettings",
    "read_toml",
    "RendererSettings",
    "resolve_file_paths",
    "resolve_path",
    "room_from_config",
    "ROOM_NAME",
    "secret_field",
    "SectionT",
    "Settings",
    "StorageSettings",
    "StreamSettings",
    "unknown_key_hint",
    "validation_error_lines",
    "VideoSettings",
    "X264_PRESETS",
    "X264_PSY_TUNES",
    "X264_TUNES",
]
