"""The wire parser: every malformed request becomes a Rejection with the right code (and field), nothing else escapes."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashtalk_live.errors import REJECT_CODES, Rejection
from flashtalk_live.ingest.protocol import (
    decode_reply,
    encode_event,
    encode_reply,
    encode_request,
    error_reply,
    ok_reply,
    parse_request,
)


def h(**fields) -> bytes:
    return json.dumps(fields).encode()


def rejection(frames) -> Rejection:
    with pytest.raises(Rejection) as ei:
        parse_request(frames)
    assert ei.value.code in REJECT_CODES
    assert ei.value.reason
    return ei.value


def code_of(frames) -> str:
    return rejection(frames).code


def test_valid_requests():
    r = parse_request(encode_request("enqueue", b"RIFF....", id="a1", format="WAV", meta={"sku": 7}))
    assert (r.cmd, r.request_id, r.args.format, r.data) == ("enqueue", "a1", "wav", b"RIFF....")
    assert r.args.meta == {"sku": 7} and r.is_audio
    r = parse_request(encode_request("play_now", b"\0\0", format="pcm_s16le", sample_rate=16000, channels=1))
    assert (r.args.sample_rate, r.args.channels) == (16000, 1)
    assert parse_request([h(v=1, cmd="ping")]).cmd == "ping"
    assert parse_request([h(v=1, cmd="cancel", segment_id="abc")]).args.segment_id == "abc"
    r = parse_request([h(v=1, cmd="set_avatar", prompt="hi"), b"\x89PNG"])
    assert r.cmd == "set_avatar" and r.data == b"\x89PNG" and not r.is_audio
    assert parse_request([h(v=1, cmd="set_avatar", image="/x.png")]).data is None


@pytest.mark.parametrize("frames, code", [
    ([], "bad_header"),
    ([b""], "bad_json"),
    ([b"\xff\xfe"], "bad_json"),
    ([b"{not json"], "bad_json"),
    ([b'{"v":1,"cmd":"ping"'], "bad_json"),  # truncated
    ([b"[" * 100000 + b"]" * 100000], "oversize"),
    ([b"[" * 30000 + b"]" * 30000], "bad_json"),  # recursion depth
    ([b"[1,2]"], "bad_header"),
    ([b'"str"'], "bad_header"),
    ([h(cmd="ping")], "bad_header"),
    ([h(v="1", cmd="ping")], "bad_header"),
    ([h(v=True, cmd="ping")], "bad_header"),
    ([h(v=2, cmd="ping")], "unsupported_version"),
    ([h(v=0, cmd="ping")], "unsupported_version"),
    ([h(v=1)], "bad_header"),
    ([h(v=1, cmd=5)], "bad_header"),
    ([h(v=1, cmd="explode")], "unknown_command"),
    ([h(v=1, cmd="enqueue")], "missing_audio"),
    ([h(v=1, cmd="insert"), b""], "empty_audio"),
    ([h(v=1, cmd="enqueue", format="wma"), b"x"], "bad_request"),
    ([h(v=1, cmd="enqueue", format="pcm_s16le"), b"xx"], "bad_request"),
    ([h(v=1, cmd="enqueue", format="pcm_s16le", sample_rate=16000, channels=0), b"xx"], "bad_request"),
    ([h(v=1, cmd="enqueue", format="pcm_s16le", sample_rate=10**9, channels=1), b"xx"], "bad_request"),
    ([h(v=1, cmd="enqueue", sample_rate=16000.5), b"xx"], "bad_request"),
    ([h(v=1, cmd="enqueue", id=""), b"x"], "bad_request"),
    ([h(v=1, cmd="enqueue", id=7), b"x"], "bad_request"),
    ([h(v=1, cmd="enqueue", id="x" * 201), b"x"], "bad_request"),
    ([h(v=1, cmd="enqueue", meta=[1]), b"x"], "bad_request"),
    ([h(v=1, cmd="ping"), b"audio"], "bad_header"),
    ([h(v=1, cmd="cancel")], "bad_request"),
    ([h(v=1, cmd="cancel", segment_id=3)], "bad_request"),
    ([h(v=1, cmd="enqueue"), b"a", b"b"], "bad_header"),
])
def test_rejections(frames, code):
    assert code_of(frames) == code


SECRET = "rtmp://push.example.com/live/SECRET-KEY-123"


@pytest.mark.parametrize("header, field", [
    (dict(cmd="ping", colour="red"), "colour"),                       # a field the command does not have
    (dict(cmd="status", url=SECRET), "url"),                          # ... whose value is never echoed
    (dict(cmd="cancel", segment_id=["a"]), "segment_id"),             # wrong type
    (dict(cmd="ping", event="yes"), "event"),                         # no coercion: "yes" is not a bool
    (dict(cmd="enqueue", sample_rate="16000"), "sample_rate"),        # nor "16000" an integer
    (dict(cmd="ping", id="x" * 201), "id"),                           # too long
    (dict(cmd="output_add", name="a b", url=SECRET), "name"),
    (dict(cmd="output_add", name="a"), "url"),                        # missing
    (dict(cmd="output_add", name="a", url="x" * 5000), "url"),
    (dict(cmd="set_avatar", prompt=""), "prompt"),
    (dict(cmd="enqueue", format="pcm_s16le", sample_rate=16000), "channels"),
])
def test_bad_request_names_the_field_and_never_echoes_the_value(header, field):
    frames = [h(v=1, **header)] + ([b"x"] if header["cmd"] == "enqueue" else [])
    e = rejection(frames)
    assert (e.code, e.field) == ("bad_request", field), e
    assert "SECRET" not in e.reason and "x" * 50 not in e.reason and "p" * 50 not in e.reason


def test_unknown_command_lists_the_table():
    e = rejection([h(v=1, cmd="launch")])
    assert e.code == "unknown_command" and "output_add" in e.reason and "enqueue" in e.reason


def test_reply_and_event_encoding():
    assert decode_reply(encode_reply(ok_reply(segment_id="s"))) == {"v": 1, "ok": True, "segment_id": "s"}
    e = decode_reply(encode_reply(error_reply("queue_full", "full")))
    assert e == {"v": 1, "ok": False, "code": "queue_full", "reason": "full"}
    t, body = encode_event({"type": "accepted", "segment_id": "x", "seq": 1})
    assert t == b"accepted" and json.loads(body)["segment_id"] == "x"
    with pytest.raises(ValueError):
        decode_reply(b"[1]")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, 0, "1", 1.0, True, None]) | json_values,
        "cmd": st.sampled_from(["enqueue", "insert", "play_now", "clear", "cancel", "status", "ping", "x"]) | json_values,
        "id": st.text(max_size=5) | json_values,
        "format": st.sampled_from(["wav", "pcm_s16le", "MP3", "bogus"]) | json_values,
        "sample_rate": st.integers(-5, 500_000) | json_values,
        "channels": st.integers(-1, 10) | json_values,
        "segment_id": st.text(max_size=5) | json_values,
        "meta": json_values,
    },
)
frames_structured = st.lists(
    headers.map(lambda d: json.dumps(d).encode()) | st.binary(max_size=64), min_size=0, max_size=4)
frames_raw = st.lists(st.binary(max_size=200), max_size=5)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(frames_structured, frames_raw))
def test_fuzz_only_protocol_errors(frames):
    try:
        r = parse_request(frames)
    except Rejection as e:
        assert e.code in REJECT_CODES and isinstance(e.reason, str)
        return
    # Whatever passes is a coherent request.
    assert r.header["v"] == 1 and isinstance(r.cmd, str)
    if r.is_audio:
        assert r.data
        if r.args.format == "pcm_s16le":
            assert r.args.sample_rate and r.args.channels


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["enqueue", "insert", "play_now"]), st.binary(min_size=1, max_size=64),
       st.none() | st.text(min_size=1, max_size=50))
def test_fuzz_roundtrip(cmd, data, rid):
    r = parse_request(encode_request(cmd, data, id=rid))
    assert (r.cmd, r.data, r.request_id) == (cmd, data, rid)
