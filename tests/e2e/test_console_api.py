"""The console's API on a real in-process daemon: the token guards every state change (and nothing changes without
it), commands go through the same table and rejection codes as ZeroMQ, play_now reaches the air, the preview follows
the air, /metrics still answers on the same port, and a non-loopback bind without a token refuses to start."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashtalk_live.daemon import Daemon
from flashtalk_live.settings import ConfigError
from flashtalk_live.config import load_settings

from support.console import ChunkColourRenderer, Http, console_settings, start_daemon, wav_bytes
from support.waiting import until

PNG_1PX = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763f8"
                        "cfc0000003010100c9fe92ef0000000049454e44ae426082")


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path)
    yield d
    d.close()


def test_without_the_token_every_state_change_is_refused_and_nothing_changes(daemon, tmp_path):
    http = Http(daemon.metrics_port, token=None)
    until(lambda: daemon.state == "on_air", what="on air")
    before_q, before_out = daemon.spool.stats(), daemon.outputs.names()
    wav = wav_bytes(1.0)
    attempts = [("enqueue", None, wav, "audio/wav"), ("insert", None, wav, "audio/wav"),
                ("play_now", None, wav, "audio/wav"), ("clear", {}, None, ""), ("cancel", {"segment_id": "x"}, None, ""),
                ("output_add", {"name": "evil", "url": str(tmp_path / "evil.flv")}, None, ""),
                ("output_remove", {"name": "rec"}, None, ""), ("set_avatar", None, PNG_1PX, "image/png"),
                ("status", {}, None, ""), ("nonexistent", {}, None, "")]
    for token in (None, "wrong-token", ""):
        for name, fields, data, ctype in attempts:
            status, body = http.command(name, fields, data, ctype or "audio/wav", token=token)
            assert status == 401, (name, token, status, body)
            assert body["ok"] is False and body["code"] == "unauthorized"
    # A form post from another site can send no Authorization header: the same refusal.
    status, _, body = http.request("POST", "/api/commands/clear", b"a=1", "application/x-www-form-urlencoded",
                                   token=None, headers={"Origin": "http://evil.example", "Cookie": "session=1"})
    assert status == 401
    # Basic (or any other scheme) with the right secret is not a bearer token.
    status, _, _ = http.request("POST", "/api/commands/clear", b"{}", "application/json", token=None,
                                headers={"Authorization": f"Basic {daemon.console_token}"})
    assert status == 401
    assert daemon.spool.stats() == before_q and daemon.outputs.names() == before_out
    assert not any(e["type"] in ("accepted", "cleared", "cancelled") for e in http.get_json("/api/events")["events"])
    assert not (tmp_path / "evil.flv").exists()
    # Reads need no token; a GET never runs a command.
    assert http.get_json("/api/status")["state"] == "on_air"
    assert http.request("GET", "/api/commands/clear", token=None)[0] == 405


def test_commands_use_the_table_and_its_rejection_codes(daemon, tmp_path):
    http = Http(daemon.metrics_port, token=daemon.console_token)
    cases = [  # (command, fields, data, expected HTTP status, code, field)
        ("enqueue", {"bogus": 1}, wav_bytes(1.0), 400, "bad_request", "bogus"),
        ("enqueue", None, b"not audio at all", 400, "undecodable_audio", None),
        ("enqueue", None, b"", 400, "empty_audio", None),
        ("enqueue", {}, None, 400, "missing_audio", None),  # JSON fields only: no data frame
        ("cancel", {"segment_id": "no-such-clip"}, None, 404, "not_found", "segment_id"),
        ("skip", {"segment_id": "no-such-clip"}, None, 409, "not_on_air", "segment_id"),
        ("overlay_set", {"name": "card", "text": "x", "margin": [16]}, None, 400, "bad_request", "margin.1"),
        ("output_remove", {"name": "nope"}, None, 404, "not_found", "name"),
        ("output_add", {"name": "rec", "url": str(tmp_path / "again.flv")}, None, 409, "already_exists", "name"),
        ("output_add", {"name": "outside", "url": "/etc/outside.flv"}, None, 403, "forbidden_path", None),
        ("set_avatar", None, b"GIF89a not an image we take", 400, "unsupported_image", None),
        ("frobnicate", {}, None, 404, "unknown_command", None),
    ]
    for name, fields, data, want_status, code, field in cases:
        status, body = http.command(name, fields, data, "application/octet-stream")
        assert (status, body["ok"], body["code"]) == (want_status, False, code), (name, status, body)
        if field is not None:
            assert body["field"] == field
    status, _, raw = http.request("POST", "/api/commands/clear", b"{not json", "application/json")
    assert status == 400 and json.loads(raw)["code"] == "bad_json"

    out = tmp_path / "extra.flv"
    status, body = http.command("output_add", {"name": "extra", "url": str(out)})
    assert (status, body["ok"]) == (200, True) and "extra" in daemon.outputs.names()
    assert any(o["name"] == "extra" for o in http.get_json("/api/outputs")["outputs"])
    status, body = http.command("output_remove", {"name": "extra"})
    assert (status, body["ok"]) == (200, True) and "extra" not in daemon.outputs.names()
    status, body = http.command("set_avatar", data=PNG_1PX, ctype="image/png")
    assert (status, body["ok"]) == (200, True), body


@pytest.mark.timeout(120)
def test_upload_play_now_reaches_the_queue_then_the_air(daemon):
    http = Http(daemon.metrics_port, token=daemon.console_token)
    until(lambda: daemon.state == "on_air", what="on air")
    status, long_ack = http.command("enqueue", {"id": "req-long", "meta": {"title": "long"}}, wav_bytes(6.0))
    assert (status, long_ack["ok"], long_ack["id"]) == (200, True, "req-long"), long_ack
    status, later = http.command("enqueue", None, wav_bytes(2.0))
    assert status == 200
    # The later clip is pending with a planned start after the long one.
    q = http.get_json("/api/queue")
    ids = [p["segment_id"] for p in q["pending"]]
    assert later["segment_id"] in ids
    starts = {p["segment_id"]: p["starts_in_s"] for p in q["pending"]}
    if long_ack["segment_id"] in starts:
        assert starts[later["segment_id"]] >= starts[long_ack["segment_id"]] + 5.9
    status, now = http.command("play_now", None, wav_bytes(2.0, freq=660.0))
    assert (status, now["ok"]) == (200, True), now
    sid = now["segment_id"]

    def started():
        return any(e["type"] == "started" and e["segment_id"] == sid for e in http.get_json("/api/events")["events"])

    until(started, 30, "the play_now clip's started event")
    levels = until(lambda: (st := http.get_json("/api/status"))["on_air"] == sid
                        and st["audio_levels"]["rms_dbfs"] and max(st["audio_levels"]["rms_dbfs"]) > -30 and st,
                        10, "the clip on air with its sound in the meters")
    assert levels["plan"]["on_air"]["segment_id"] == sid and levels["plan"]["on_air"]["duration_s"] == pytest.approx(2.0, abs=0.05)
    # Cancel the pending clip through the console.
    status, body = http.command("cancel", {"segment_id": later["segment_id"]})
    assert (status, body["ok"], body["was"]) == (200, True, "pending"), body
    assert later["segment_id"] not in [p["segment_id"] for p in http.get_json("/api/queue")["pending"]]
    ev = http.get_json("/api/events")
    assert len(ev["events"]) <= 200 and all(e["seq"] > 0 for e in ev["events"])
    assert all(e["seq"] > ev["last_seq"] for e in http.get_json(f"/api/events?after={ev['last_seq']}")["events"])


@pytest.mark.timeout(120)
def test_preview_follows_the_air_and_metrics_share_the_port(tmp_path):
    s = console_settings(tmp_path)
    d = Daemon(s, renderer_factory=lambda _s: ChunkColourRenderer(128, 128))
    d.start()
    try:
        http = Http(d.metrics_port)
        until(lambda: http.request("GET", "/preview.jpg", token=None)[0] == 200, 30, "a first preview")
        seen: dict[int, bytes] = {}

        def two_different():
            status, headers, body = http.request("GET", "/preview.jpg", token=None)
            assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
            seen[int(headers["X-Frame-Number"])] = body
            return len(set(seen.values())) >= 2

        until(two_different, 30, "the preview to change")
        assert max(seen) > min(seen)  # later frames of the air
        # The streaming form: two JPEG parts of one multipart/x-mixed-replace response.
        import urllib.request
        with urllib.request.urlopen(http.base + "/preview.mjpeg", timeout=30) as r:
            assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            buf = b""
            while buf.count(b"--flashtalkframe") < 3:
                buf += r.read1(65536)
        assert buf.count(b"\xff\xd8") >= 2
        status, _, metrics = http.request("GET", "/metrics", token=None)
        assert status == 200 and b"flashtalk_state" in metrics
        # A rebinding page's Host name is refused on a loopback bind.
        assert http.request("GET", "/api/status", token=None, headers={"Host": "evil.example:80"})[0] == 403
        page = http.request("GET", "/", token=None)
        assert page[0] == 200 and b"<title>" in page[2]
        assert not re.search(rb'(src|href)="(https?:)?//', page[2])  # nothing from a CDN: assets ship in the package
        for asset in re.findall(rb'(?:src|href)="(/static/[^"]+)"', page[2]):
            assert http.request("GET", asset.decode(), token=None)[0] == 200, asset
    finally:
        d.close()


def test_non_loopback_bind_needs_a_token(tmp_path):
    with pytest.raises(ConfigError, match="console.token"):
        console_settings(tmp_path, 'metrics.host="0.0.0.0"')
    s = console_settings(tmp_path, 'metrics.host="0.0.0.0"', 'console.token="s3cret-token"')
    assert s.console.token.get_secret_value() == "s3cret-token"
    assert "s3cret-token" not in repr(s) and "s3cret-token" not in json.dumps(s.model_dump(mode="json"))
    cfg = tmp_path / "open.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "state"}"\n[metrics]\nhost = "0.0.0.0"\nport = 0\n')
    r = subprocess.run([sys.executable, "-m", "flashtalk_live", "run", "-c", str(cfg)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "console.token" in lines[0], r.stderr
    assert not (tmp_path / "state" / "spool").exists()


def test_token_file_and_generated_token(tmp_path):
    tok = tmp_path / "tok"
    tok.write_text("from-a-file\n")
    d = start_daemon(tmp_path, f'console.token_file="{tok}"')
    try:
        assert d.console_token == "from-a-file"
        assert Http(d.metrics_port, "from-a-file").command("clear")[0] == 200
    finally:
        d.close()
    d = start_daemon(tmp_path / "b")
    try:
        gen = Path(d.s.state_dir) / "console.token"
        assert gen.read_text().strip() == d.console_token and (gen.stat().st_mode & 0o777) == 0o600
    finally:
        d.close()
    with pytest.raises(ConfigError, match="token_file"):
        Daemon(console_settings(tmp_path / "c", f'console.token_file="{tmp_path / "missing"}"'))


def test_stream_keys_never_leave_through_the_console(daemon):
    http = Http(daemon.metrics_port, token=daemon.console_token)
    key = "SKconsole8d1f0b2a"
    status, body = http.command("output_add", {"name": "live", "url": f"rtmp://127.0.0.1:1/app/{key}?token={key}q"})
    assert status == 200, body
    bad_status, bad = http.command("output_add", {"name": "typo", "url": f"rtmpx://127.0.0.1:1/app/{key}"})
    assert bad_status == 400 and bad["code"] == "bad_output"
    seen = [json.dumps(body), json.dumps(bad)]
    for path in ("/api/status", "/api/outputs", "/api/queue", "/api/events", "/metrics"):
        seen.append(http.request("GET", path, token=None)[2].decode())
    assert not any(key in text for text in seen)
    assert any("rtmp://127.0.0.1:1/app/****" in text for text in seen)


def test_the_sound_preview_is_the_air_and_the_log_names_the_console_url(tmp_path):
    """/preview.wav carries the programme sound as it aired (a pushed 440 Hz clip is what it plays), and the start-up
    log names the console's address."""
    import urllib.request

    import numpy as np
    from structlog.testing import capture_logs

    d = Daemon(console_settings(tmp_path))
    with capture_logs() as logs:
        d.start()
    try:
        urls = [e["url"] for e in logs if e.get("event") == "console"]
        assert urls == [f"http://127.0.0.1:{d.metrics_port}/"], logs
        http = Http(d.metrics_port, d.console_token)
        status, reply = http.command("enqueue", {"name": "tone"}, wav_bytes(20.0, 440.0))
        assert status == 200, reply
        until(lambda: http.get_json("/api/status")["on_air"] == reply["segment_id"], 60, "the tone on air")
        with urllib.request.urlopen(http.base + "/preview.wav", timeout=30) as r:
            assert r.headers["Content-Type"] == "audio/wav"
            head = r.read(44)
            assert head[:4] == b"RIFF" and head[8:16] == b"WAVEfmt " and head[36:40] == b"data"
            channels, rate = int.from_bytes(head[22:24], "little"), int.from_bytes(head[24:28], "little")
            assert (rate, channels) == (d.s.encoder.audio_rate, d.s.encoder.audio_channels)
            assert http.get_json("/api/status")["preview"]["listeners"] == 1
            want = rate * channels * 2  # one second of 16-bit samples
            pcm = b""
            while len(pcm) < want:
                pcm += r.read1(want - len(pcm))
        x = np.frombuffer(pcm, "<i2").reshape(-1, channels).mean(axis=1) / 32768.0
        spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
        peak_hz = np.argmax(spectrum) * rate / len(x)
        assert abs(peak_hz - 440.0) < 3.0, peak_hz
        assert np.sqrt(np.mean(x * x)) > 0.05  # the clip's level, not silence
        until(lambda: http.get_json("/api/status")["preview"]["listeners"] == 0, 30, "the listener gone")
    finally:
        d.close()
