"""The room's configuration, loaded and checked: TOML file < environment (FLASHTALK_LIVE_...) < CLI flags.

`settings` is the schema and imports nothing above the leaves; the tables that know the names a setting may take
check their own section here, after the schema: the renderer kind (and through it the model profiles of a
flashtalk room) in `renderers/kinds.py`, every output URL in `outputs/kinds.py`. A configuration error is one
`ConfigError` whose lines are masked: the CLI prints it and exits 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from flashtalk_live.outputs.kinds import OutputURLError, validate_url
from flashtalk_live.renderers.kinds import KINDS as RENDERER_KINDS
from flashtalk_live.secrets import mask_text
from flashtalk_live.settings import (
    ConfigError,
    Settings,
    deep_merge,
    env_tree,
    check_benchmark_only,
    error_line,
    format_error_lines,
    format_validation_error,
    parse_override,
    read_toml,
    resolve_file_paths,
    room_from_config,
)


def registry_errors(settings: Settings) -> list[str]:
    """What the registries find wrong with `settings` (one line each); output URLs are normalised in place by the
    rules of their kind (the same rules as `output_add`)."""
    lines: list[str] = []
    kind = RENDERER_KINDS.get(settings.renderer.kind)
    if kind is None:
        lines.append(error_line("renderer.kind", settings.renderer.kind,
                                f"not a renderer kind; expected one of {list(RENDERER_KINDS)}"))
    else:
        try:
            kind.check(settings)
        except ValueError as e:  # a ProfileError or a chunking mismatch: the message names the setting
            lines.append(mask_text(str(e)))
    for i, out in enumerate(settings.outputs):
        try:
            settings.outputs[i] = out.model_copy(update={"url": validate_url(out.url)})
        except OutputURLError as e:
            lines.append(error_line(f"outputs.{i}.url", out.url, str(e)))
    return lines


def load_settings(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | None = None,
    environ: dict[str, str] | None = None,
    replace: dict[str, Any] | None = None,
) -> Settings:
    """Build Settings from a TOML file, FLASHTALK_LIVE_* variables, KEY=VALUE overrides and `replace` (whole
    top-level values, e.g. the CLI's outputs), in rising priority; the schema first, then the registries."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        data = read_toml(p, "config file", ConfigError)
        data = resolve_file_paths(data, p.resolve().parent)
        data.setdefault("room", room_from_config(p))
        source = str(p)
    env = os.environ if environ is None else environ
    data = deep_merge(data, env_tree(dict(env)))
    for item in overrides or []:
        data = deep_merge(data, parse_override(item))
    data.update(replace or {})
    try:
        settings = Settings(**data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    lines = registry_errors(settings)
    if lines:
        raise ConfigError(format_error_lines(lines, source))
    check_benchmark_only(settings, env)
    return settings
