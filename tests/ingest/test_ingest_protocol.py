"""The wire parser: every malformed request becomes a ProtocolError with the right code, and nothing else escapes."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flashtalk_live.ingest.protocol import (
    REJECT_CODES,
    ProtocolError,
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


def code_of(frames, extra=()) -> str:
    with pytest.raises(ProtocolError) as ei:
        parse_request(frames, extra)
    assert ei.value.code in REJECT_CODES
    assert ei.value.reason
    return ei.value.code


def test_valid_requests():
    r = parse_request(encode_request("enqueue", b"RIFF....", id="a1", format="WAV", meta={"sku": 7}))
    assert (r.cmd, r.request_id, r.format, r.data) == ("enqueue", "a1", "wav", b"RIFF....")
    assert r.extra == {"meta": {"sku": 7}} and r.is_audio
    r = parse_request(encode_request("play_now", b"\0\0", format="pcm_s16le", sample_rate=16000, channels=1))
    assert (r.sample_rate, r.channels) == (16000, 1)
    assert parse_request([h(v=1, cmd="ping")]).cmd == "ping"
    assert parse_request([h(v=1, cmd="cancel", segment_id="abc")]).header["segment_id"] == "abc"
    r = parse_request([h(v=1, cmd="set_avatar", path="x.png"), b"\x89PNG"], extra_commands={"set_avatar"})
    assert r.cmd == "set_avatar" and r.data == b"\x89PNG" and not r.is_audio


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
    ([h(v=1, cmd="enqueue", format="wma"), b"x"], "bad_header"),
    ([h(v=1, cmd="enqueue", format="pcm_s16le"), b"xx"], "bad_header"),
    ([h(v=1, cmd="enqueue", format="pcm_s16le", sample_rate=16000, channels=0), b"xx"], "bad_header"),
    ([h(v=1, cmd="enqueue", format="pcm_s16le", sample_rate=10**9, channels=1), b"xx"], "bad_header"),
    ([h(v=1, cmd="enqueue", sample_rate=16000.5), b"xx"], "bad_header"),
    ([h(v=1, cmd="enqueue", id=""), b"x"], "bad_header"),
    ([h(v=1, cmd="enqueue", id=7), b"x"], "bad_header"),
    ([h(v=1, cmd="enqueue", id="x" * 201), b"x"], "bad_header"),
    ([h(v=1, cmd="enqueue", meta=[1]), b"x"], "bad_header"),
    ([h(v=1, cmd="ping"), b"audio"], "bad_header"),
    ([h(v=1, cmd="cancel")], "bad_header"),
    ([h(v=1, cmd="cancel", segment_id=3)], "bad_header"),
    ([h(v=1, cmd="enqueue"), b"a", b"b"], "bad_header"),
])
def test_rejections(frames, code):
    assert code_of(frames) == code


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
        r = parse_request(frames, extra_commands={"output_add"})
    except ProtocolError as e:
        assert e.code in REJECT_CODES and isinstance(e.reason, str)
        return
    # Whatever passes is a coherent request.
    assert r.header["v"] == 1 and isinstance(r.cmd, str)
    if r.is_audio:
        assert r.data
        if r.format == "pcm_s16le":
            assert r.sample_rate and r.channels


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["enqueue", "insert", "play_now"]), st.binary(min_size=1, max_size=64),
       st.none() | st.text(min_size=1, max_size=50))
def test_fuzz_roundtrip(cmd, data, rid):
    r = parse_request(encode_request(cmd, data, id=rid))
    assert (r.cmd, r.data, r.request_id) == (cmd, data, rid)
