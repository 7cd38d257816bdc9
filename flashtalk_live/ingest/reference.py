"""docs/protocol.md's command and rejection-code reference, rendered from the command table and REJECT_CODES.

`python -m flashtalk_live.ingest.reference docs/protocol.md` rewrites the generated sections in place;
tests/ingest/test_command_table.py fails when the page and the table disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from flashtalk_live.errors import REJECT_CODES
from flashtalk_live.ingest.commands import COMMANDS, Command

SECTIONS = ("commands", "codes")


def _type(prop: dict[str, Any]) -> str:
    """A JSON-schema property as a short type with its limits, e.g. `string, 1-200 chars`."""
    options = prop.get("anyOf", [prop])
    parts = []
    for o in options:
        t = o.get("type", "any")
        if t == "null":
            continue
        if "enum" in o:
            parts.append(" \\| ".join(f"`{v}`" for v in o["enum"]))
            continue
        limits = []
        if "minLength" in o or "maxLength" in o:
            limits.append(f"{o.get('minLength', 0)}-{o['maxLength']} chars" if "maxLength" in o
                          else f"at least {o['minLength']} chars")
        if "pattern" in o:
            limits.append(f"`{o['pattern']}`")
        for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
            if key in o:
                limits.append(f"{sign} {o[key]}")
        parts.append(", ".join([t] + limits))
    return " or ".join(parts) or "any"


def command_markdown(c: Command) -> str:
    schema = c.args.model_json_schema()
    required = set(schema.get("required", []))
    data = {"none": "none", "audio": "required: the audio file's bytes",
            "image": "optional: a PNG/JPEG picture's bytes"}[c.data]
    who = "trusted peers only" if c.trust == "trusted" else "any peer"
    if c.trusted_fields:
        who += f" (`{'`, `'.join(sorted(c.trusted_fields))}`: trusted peers only)"
    lines = [f"#### `{c.name}`", "", f"{c.description[0].upper()}{c.description[1:]}. Data frame: {data}. "
             f"Callers: {who}.", "", "| field | type | required | meaning |", "|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        lines.append(f"| `{name}` | {_type(prop)} | {'yes' if name in required else 'no'} | "
                     f"{prop.get('description', '')} |")
    return "\n".join(lines)


def commands_markdown() -> str:
    return "\n\n".join(command_markdown(c) for c in COMMANDS.values())


def codes_markdown() -> str:
    rows = ["| code | when |", "|---|---|"] + [f"| `{code}` | {why} |" for code, why in REJECT_CODES.items()]
    return "\n".join(rows)


def render(section: str) -> str:
    return {"commands": commands_markdown, "codes": codes_markdown}[section]()


def _markers(section: str) -> tuple[str, str]:
    return (f"<!-- generated:{section} (python -m flashtalk_live.ingest.reference docs/protocol.md) -->",
            f"<!-- /generated:{section} -->")


def extract(text: str, section: str) -> str | None:
    """The generated section's current content in a page, or None when its markers are missing."""
    begin, end = _markers(section)
    m = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), text, re.S)
    return m.group(1).rstrip("\n") if m else None


def update(text: str) -> str:
    for section in SECTIONS:
        begin, end = _markers(section)
        if extract(text, section) is None:
            raise ValueError(f"markers for {section!r} missing: put {begin} and {end} where it belongs")
        block = f"{begin}\n{render(section)}\n{end}"
        text = re.sub(re.escape(begin) + r"\n.*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    return text


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "docs/protocol.md")
    path.write_text(update(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
