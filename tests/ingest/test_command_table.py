"""The command table is the one source: docs/protocol.md, the client's methods and the CLI verbs follow from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flashtalk_live.cli import build_parser
from flashtalk_live.client import Client
from flashtalk_live.errors import REJECT_CODES, Rejection
from flashtalk_live.ingest import reference
from flashtalk_live.ingest.commands import AUDIO_COMMANDS, AUDIO_MODES, COMMANDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("section", reference.SECTIONS)
def test_protocol_md_lists_exactly_the_table(section):
    page = (ROOT / "docs" / "protocol.md").read_text()
    assert reference.extract(page, section) == reference.render(section), (
        "docs/protocol.md is out of date: run `python -m flashtalk_live.ingest.reference docs/protocol.md`")


def test_reference_names_every_command_field_and_code():
    text = reference.commands_markdown()
    for name, c in COMMANDS.items():
        assert f"#### `{name}`" in text
        for f in c.args.model_fields:
            assert f"| `{f}` |" in text
    assert all(f"| `{code}` |" in reference.codes_markdown() for code in REJECT_CODES)


def test_every_command_is_strict_and_described():
    for name, c in COMMANDS.items():
        assert c.description and c.args.model_config.get("extra") == "forbid" and c.args.model_config.get("strict")
        assert "id" in c.args.model_fields, name
        assert c.trusted_fields <= set(c.args.model_fields), name


def test_every_audio_command_queues_in_a_spool_mode():
    assert set(AUDIO_MODES) == AUDIO_COMMANDS


def test_client_has_a_method_per_command():
    for name, c in COMMANDS.items():
        assert callable(getattr(Client, name)), name


def test_cli_has_a_verb_per_command():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, c in COMMANDS.items():
        if c.data in ("audio", "stream"):  # push; a streamed clip's pieces: push --stream
            continue
        assert name.replace("_", "-") in sub.choices and name in sub.choices, name
        verb = sub.choices[name]
        dests = {a.dest for a in verb._actions}
        assert set(c.args.model_fields) <= dests, name
    push = {a.dest for a in sub.choices["push"]._actions}
    assert AUDIO_COMMANDS - {"enqueue"} <= push
    assert "stream" in push


def test_rejection_codes_are_registered():
    with pytest.raises(LookupError, match="REJECT_CODES"):  # a bug: answered internal, never bad_request
        Rejection("made_up", "no such code")
    e = Rejection("bad_request", "x: bad", "x")
    assert e.reply_fields() == {"code": "bad_request", "reason": "x: bad", "field": "x"}
