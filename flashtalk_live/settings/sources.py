"""Configuration text into settings data: the environment's FLASHTALK_LIVE_ variables and `--set` overrides as
nested dicts, merged over a file's; a file's relative paths anchored to its folder; the one TOML reader; the
benchmark-only gate. `config.load_settings` runs them in order (file < environment < flags) before the schema.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from flashtalk_live.settings.schema import ENV_PREFIX, Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Variables with the prefix that are not settings: the CLI's default config file, and the flag that the
# benchmark scripts set to allow model.random_weights.
CONFIG_ENV = ENV_PREFIX + "CONFIG"
BENCHMARK_ENV = ENV_PREFIX + "BENCHMARK"
OUTPUT_URL_ENV = ENV_PREFIX + "OUTPUT_URL"  # `output-add`: the stream URL, kept off argv
_NOT_SETTINGS = {CONFIG_ENV, BENCHMARK_ENV, OUTPUT_URL_ENV}


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names field, value and expectation."""


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _env_value(key: str, raw: str) -> Any:
    """JSON when it parses (lists, numbers, bools), else the plain string. A value that starts like JSON (a list, an
    object, a quoted string) but does not parse is an error naming the variable and the position, never the value:
    these variables carry stream keys."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        if raw.lstrip()[:1] in ("[", "{", '"'):
            raise ConfigError(f"{key}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno} of a "
                              f"{len(raw)}-character value; the value is not shown: it may hold a stream key); expected "
                              "JSON, or a plain text that starts with [, { or \" written as a JSON string") from None
        return raw


def env_tree(environ: dict[str, str]) -> dict[str, Any]:
    """FLASHTALK_LIVE_A__B=v -> {"a": {"b": v}}; values parse as JSON when they can (lists, numbers, bools)."""
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key in _NOT_SETTINGS:
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        value = _env_value(key, raw)
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
              ("model", "weights_dir"), ("model", "wav2vec_dir"), ("model", "text_cache_dir"),
              ("renderer", "lookahead_spill_dir"),
              ("ingest", "server_key"), ("ingest", "client_keys_dir"), ("overlays", "font"), ("console", "token_file"))
_FILE_LIST_KEYS = (("ingest", "avatar_dirs"), ("output_policy", "file_dirs"), ("overlays", "font_dirs"))


def _anchor(value: Any, base: Path) -> Any:
    """A relative file path made absolute against `base`; templates ({state_dir}/...), "", URLs left alone."""
    if not isinstance(value, str) or not value or value.startswith("{") or "://" in value:
        return value
    return str(resolve_path(value, base))


def _anchor_endpoint(ep: Any, base: Path) -> Any:
    if isinstance(ep, str) and ep.startswith("ipc://") and not ep[len("ipc://"):].startswith("@"):
        return "ipc://" + _anchor(ep[len("ipc://"):], base)
    return ep


def resolve_file_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """A config file's relative paths (file keys, ipc endpoints, file outputs) against the file's directory."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for key in _FILE_KEYS:
        node: dict[str, Any] = out
        for part in key[:-1]:
            child = node.get(part)
            node = child if isinstance(child, dict) else {}
        if key[-1] in node:
            node[key[-1]] = _anchor(node[key[-1]], base)
    for section, list_key in _FILE_LIST_KEYS:
        sec = out.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(list_key), list):
            sec[list_key] = [_anchor(v, base) for v in sec[list_key]]
    overlays = out.get("overlays")
    if isinstance(overlays, dict) and isinstance(overlays.get("layers"), list):
        overlays["layers"] = [{**ly, "image": _anchor(ly["image"], base)} if isinstance(ly, dict) and "image" in ly
                              else ly for ly in overlays["layers"]]
    ingest = out.get("ingest")
    if isinstance(ingest, dict):
        for k in ("control", "events"):
            if isinstance(ingest.get(k), list):
                ingest[k] = [_anchor_endpoint(ep, base) for ep in ingest[k]]
    if isinstance(out.get("outputs"), list):
        # Only what is a recording path: anything else is left for the URL check to refuse (masked), so a
        # schemeless stream URL such as "host:1935/live/KEY" is never turned into a file path that errors echo.
        out["outputs"] = [{**o, "url": _anchor(o["url"], base)}
                          if isinstance(o, dict) and isinstance(o.get("url"), str)
                          and o["url"].lower().endswith((".flv", ".mp4")) else o
                          for o in out["outputs"]]
    return out


def loads_toml(text: str, source: str, error: type[Exception]) -> dict[str, Any]:
    """The one TOML parser (config files, profiles, playlists): malformed text raises `error` naming the source."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise error(f"{source}: not valid TOML: {e}") from None


def read_toml(path: Path, what: str, error: type[Exception]) -> dict[str, Any]:
    """The one TOML file reader: a missing or malformed file raises `error` naming the file and the problem."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except OSError as e:  # a folder, a file this user may not read: the operator's to fix, one line
        raise error(f"{what} {path}: cannot be read ({e.strerror or e}); expected a readable TOML file") from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {path}: not UTF-8 text (byte {e.start}); expected a TOML file") from None
    return loads_toml(text, str(path), error)


def resolve_path(value: str, base: Path) -> Path:
    """A path written in a file (config, playlist): ~ expanded, a relative one taken against the file's folder."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(os.path.normpath(base / p))


def benchmark_mode(environ: Any = None) -> bool:
    """True when a benchmark script started this process (FLASHTALK_LIVE_BENCHMARK=1)."""
    env = os.environ if environ is None else environ
    return env.get(BENCHMARK_ENV) == "1"


def check_benchmark_only(settings: Settings, environ: Any = None) -> None:
    """Refuse benchmark-only settings (random weights put noise on air) outside a benchmark run."""
    rw = settings.model.random_weights
    if rw != "off" and not benchmark_mode(environ):
        raise ConfigError(f"model.random_weights = {rw!r} is for benchmarks only: the avatar would be random noise. "
                          f"Set model.random_weights = \"off\" (the default) and model.weights_dir; benchmark scripts "
                          f"set {BENCHMARK_ENV}=1 to allow it")
