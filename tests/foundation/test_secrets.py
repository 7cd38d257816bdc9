"""The one masker (every URL shape) and the output-kind registry (the same rules at load and at output_add)."""

from __future__ import annotations

import pytest

from flashtalk_live.outputs.kinds import OutputURLError, kind_name, validate_url
from flashtalk_live.secrets import carries_secret, mask_obj, mask_text, mask_url


@pytest.mark.parametrize("url,masked", [
    ("rtmp://push.example.com/live/KEY", "rtmp://push.example.com/live/****"),
    ("RTMP://h/live/KEY", "RTMP://h/live/****"),
    ("Rtmps://u:PW@h:443/app/KEY?token=TOK", "Rtmps://***@h:443/app/****?****"),
    ("rtmpx://h:1/live/KEY", "rtmpx://h:1/live/****"),
    ("rtmp:/h/live/KEY", "rtmp:/h/live/****"),
    ("rmtp://h/live/KEY", "rmtp://h/live/****"),
    ("rtmp:///live/KEY", "rtmp:///live/****"),
    ("rtmp://h/KEY", "rtmp://h/****"),  # a key with no app in front
    ("rtmp://u:pa/ss@h/app/KEY", "rtmp://***@h/app/****"),  # a '/' in the password
    ("srt://h:9000?streamid=KEY", "srt://h:9000?****"),
    ("rtmp://h", "rtmp://h"),
    ("/tmp/rec.flv", "/tmp/rec.flv"),
    ("file:///tmp/rec.flv", "file:///tmp/rec.flv"),
    ("ipc:///tmp/state/control.sock", "ipc:///tmp/state/control.sock"),
    ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"),
    ("tcp://u:PW@h:1", "tcp://***@h:1"),
])
def test_mask_url_every_shape_and_idempotent(url: str, masked: str) -> None:
    assert mask_url(url) == masked
    assert mask_url(masked) == masked
    assert carries_secret(url) == (url != masked)


def test_mask_text_finds_urls_in_free_text_and_data() -> None:
    text = "open 'RTMPS://u:PW@h:443/app/KEY1' failed: refused; retry rmtp://h/live/KEY2."
    assert mask_text(text) == "open 'RTMPS://***@h:443/app/****' failed: refused; retry rmtp://h/live/****."
    data = {"a": ["x rtmp://h/a/KEY3", ("rtmp:/h/a/KEY4",)], "n": 3, "none": None}
    assert "KEY" not in repr(mask_obj(data)) and mask_obj(data)["n"] == 3
    assert mask_text("2026-11-29T08:05:31 a:b") == "2026-11-29T08:05:31 a:b"


def test_strict_mask_for_rejected_values_without_scheme() -> None:
    assert mask_url("a.rtmp.youtube.com/live2/KEY", strict=True) == "a.rtmp.youtube.com/****"
    assert mask_url("u:PW@h/app/KEY", strict=True) == "***@h/****"
    assert mask_url("/tmp/x.avi", strict=True) == "/tmp/x.avi"


@pytest.mark.parametrize("url,kind,normal", [
    ("RTMP://h/live/k", "rtmp", "rtmp://h/live/k"),
    ("Rtmps://h:443/app/k?x=1", "rtmp", "rtmps://h:443/app/k?x=1"),
    ("rtmp://h/live?token=k", "rtmp", "rtmp://h/live?token=k"),
    ("/x/y.FLV", "file", "/x/y.FLV"),
    ("FILE:///x/y.mp4", "file", "file:///x/y.mp4"),
    ("{state_dir}/rec-%Y.flv", "file", "{state_dir}/rec-%Y.flv"),
])
def test_registry_accepts_and_normalises(url: str, kind: str, normal: str) -> None:
    assert kind_name(url) == kind and validate_url(url) == normal


@pytest.mark.parametrize("url,problem", [
    ("rtmpx://h/live/KEY", "unknown scheme 'rtmpx' (did you mean 'rtmp'?)"),
    ("rmtp://h/live/KEY", "did you mean 'rtmp'?"),
    ("rtmp:/h/live/KEY", "needs exactly two slashes"),
    ("rtmp:///live/KEY", "needs exactly two slashes"),
    ("rtmp://h/KEY", "no app and stream key"),
    ("rtmp://h:port/live/KEY", "bad host or port"),
    ("rtmp://h/live/KEY x", "white space"),
    ("rtmp://h/live KEY", "white space"),  # a stray space pasted between the app and the key
    ("rtmp://h/live/PART KEY", "white space"),
    ("rmtp://h/live KEY", "did you mean 'rtmp'?"),
    ("http://h/live/KEY", "unknown scheme 'http'"),
    ("h:1935/live/KEY", "unsupported file type"),
    ("", "empty"),
])
def test_registry_rejects_with_the_masked_url_and_what_is_expected(url: str, problem: str) -> None:
    with pytest.raises(OutputURLError) as e:
        validate_url(url)
    assert problem in str(e.value) and "expected" in str(e.value)
    assert "KEY" not in str(e.value)


def test_a_generated_console_token_is_never_written_into_a_file_others_can_read(tmp_path):
    """{state_dir}/console.token left empty with a wider mode (touched by hand, restored from a backup): the new
    random token was written into it keeping that mode (O_CREAT's 0600 applies only to a new file)."""
    import os
    import stat

    from flashtalk_live.console.auth import resolve_token
    from flashtalk_live.settings import ConsoleSettings

    path = tmp_path / "console.token"
    path.write_text("")
    path.chmod(0o644)
    token, where = resolve_token(ConsoleSettings(), "127.0.0.1", str(tmp_path))
    assert where == str(path) and path.read_text().strip() == token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
