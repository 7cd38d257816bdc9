"""How settings and their errors are shown to people, always masked: a configuration error as one line per field
(field = masked value: what is expected; a typo'd key with the key it most likely meant), and `config show`'s dump.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr, ValidationError

from flashtalk_live.secrets import mask_obj, mask_text, mask_url
from flashtalk_live.settings.schema import Settings


def _mask_shown(value: Any) -> Any:
    """A rejected value of any shape, masked for its error line: every URL-like string in it strictly, so a key
    after a stray space ('rtmp://h/live KEY') is hidden too (free-text masking ends a URL at the space)."""
    if isinstance(value, str):
        return mask_url(value, strict=True) if ":/" in value else mask_text(value)
    if isinstance(value, dict):
        return {k: _mask_shown(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_mask_shown(v) for v in value)
    return mask_obj(value)


def error_line(loc: str, value: Any, msg: str, missing: bool = False) -> str:
    """One configuration error as a line: field = masked value: what is expected. Values are masked before they
    are cut short, so a cut never splits a URL away from its scheme; url fields are masked strictly (any shape may
    hide a key)."""
    msg = mask_text(msg.removeprefix("Value error, "))
    if missing:
        shown = "<missing>"
    elif isinstance(value, str) and loc.endswith("url"):
        shown = repr(mask_url(value, strict=True))
    else:
        shown = mask_text(repr(_mask_shown(value)))
    if len(shown) > 80:
        shown = shown[:77] + "..."
    twice = loc.endswith("url") and shown in msg  # the output-kind message quotes the (masked) URL itself
    return f"{loc}: {msg}" if twice else f"{loc} = {shown}: {msg}"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds (a section, list[OutputSettings], Optional[...]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def unknown_key_hint(loc: tuple[Any, ...]) -> str:
    """For a key that is not a setting: "did you mean ...?" (difflib) or the keys its section has."""
    model: type[BaseModel] | None = Settings
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list section ([[outputs]])
            continue
        field = model.model_fields.get(str(part)) if model is not None else None
        model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return "not a setting"
    if model is None:
        return "not a setting"
    names = list(model.model_fields)
    prefix = ".".join(str(p) for p in loc[:-1] if not isinstance(p, int))
    close = difflib.get_close_matches(str(loc[-1]), names, n=2, cutoff=0.6)
    if close:
        return "not a setting; did you mean " + " or ".join(".".join(filter(None, (prefix, c))) for c in close) + "?"
    return f"not a setting; {'[' + prefix + ']' if prefix else 'the top level'} has: {', '.join(names)}"


def secret_field(loc: tuple[Any, ...]) -> bool:
    """Whether `loc` names a secret setting (SecretStr, or marked `secret`): its rejected value is never shown."""
    model: type[BaseModel] | None = Settings
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None:
            return False
        field = model.model_fields.get(str(part))
        if field is None:
            return False
        model = _model_in(field.annotation)
    if field is None:
        return False
    extra = field.json_schema_extra
    return bool(isinstance(extra, dict) and extra.get("secret")) or any(
        a in (SecretStr, SecretBytes) for a in (field.annotation, *typing.get_args(field.annotation)))


def validation_error_lines(err: ValidationError) -> list[str]:
    """One line per error of the schema (`error_line`); a check across fields is its message alone."""
    lines = []
    for e in err.errors():
        if not e["loc"]:  # a check across fields: its message names them, the input is the whole config
            lines.append(mask_text(e["msg"].removeprefix("Value error, ")))
            continue
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":  # a typo'd key: name it and the key it most likely meant
            lines.append(f"{loc}: {unknown_key_hint(tuple(e['loc']))}")
            continue
        if secret_field(tuple(e["loc"])) and e["type"] != "missing":  # a token: never echoed, whatever its shape
            lines.append(f"{loc} = <hidden>: {mask_text(e['msg'].removeprefix('Value error, '))}")
            continue
        lines.append(error_line(loc, e.get("input"), e["msg"], missing=e["type"] == "missing"))
    return lines


def format_error_lines(lines: list[str], source: str) -> str:
    if len(lines) == 1:
        return f"invalid configuration ({source}): {lines[0]}"
    return "\n  ".join([f"invalid configuration ({source}):"] + lines)


def format_validation_error(err: ValidationError, source: str) -> str:
    return format_error_lines(validation_error_lines(err), source)


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The settings as JSON data with every string masked (output URLs and anything else that holds one)."""
    return mask_obj(settings.model_dump(mode="json"))
