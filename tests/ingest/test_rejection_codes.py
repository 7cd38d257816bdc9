"""Every rejection code, provoked for real over ZeroMQ: the daemon's own commands against an in-process Daemon, the
rest against a bare IngestServer. No client mistake comes back as `internal`, and no reply repeats a secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from ingest_audiogen import pcm_s16le

from flashtalk_live.daemon import Daemon
from flashtalk_live.errors import REJECT_CODES
from flashtalk_live.settings import load_settings

SECRET = "SECRET-KEY-42"


def hdr(**fields) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


def pcm(seconds: float) -> list[bytes]:
    return [hdr(cmd="enqueue", format="pcm_s16le", sample_rate=16000, channels=1), pcm_s16le(seconds, 16000, 1)]


# code -> (transport, [requests]); every request but the last must succeed, the last gets the code (and field).
DAEMON_CASES: dict[str, tuple[str, list[list[bytes]], str | None]] = {
    "bad_json": ("tcp", [[b"{garbage"]], None),
    "bad_header": ("tcp", [[b"[]"]], None),
    "unsupported_version": ("tcp", [[json.dumps({"v": 2, "cmd": "ping"}).encode()]], "v"),
    "unknown_command": ("tcp", [[hdr(cmd="launch")]], None),
    "bad_request": ("tcp", [[hdr(cmd="status", url=f"rtmp://h/app/{SECRET}")]], "url"),
    "forbidden": ("tcp", [[hdr(cmd="output_add", name="x", url=f"rtmp://h/app/{SECRET}")]], None),
    "missing_audio": ("tcp", [[hdr(cmd="enqueue")]], None),
    "empty_audio": ("tcp", [[hdr(cmd="insert"), b""]], None),
    "undecodable_audio": ("tcp", [[hdr(cmd="enqueue", format="wav"), b"RIFF" + b"\0" * 400]], None),
    "too_long": ("tcp", [pcm(3.0)], None),
    "too_short": ("tcp", [pcm(0.002)], None),
    "oversize": ("tcp", [[b"{" + b" " * 70_000 + b"}"]], None),
    "not_found": ("ipc", [[hdr(cmd="output_remove", name="nope")]], "name"),
    "already_exists": ("ipc", [[hdr(cmd="output_add", name="rec", url="/tmp/other.flv")]], "name"),
    "bad_output": ("ipc", [[hdr(cmd="output_add", name="x", url=f"rtmpx://h/app/{SECRET}")]], "url"),
    "bad_image": ("tcp", [[hdr(cmd="set_avatar"), b"not a picture"]], None),
    # last: the clip stays queued (or on air) while the second one is refused
    "queue_full": ("tcp", [pcm(1.5), pcm(1.5)], None),
}
# Not reachable through a complete daemon: a command with no handler, and a handler's own bug.
SERVER_CASES = ("unavailable", "internal")


def test_every_code_has_a_case():
    assert set(DAEMON_CASES) | set(SERVER_CASES) == set(REJECT_CODES)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[Daemon]:
    import shutil
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="ftl-", dir="/tmp"))  # ipc paths are limited to ~107 bytes
    out = tmp_path_factory.mktemp("rec")
    s = load_settings(None, [
        f'state_dir="{short}"', 'ingest.control=["ipc://{state_dir}/control.sock", "tcp://127.0.0.1:0"]',
        'ingest.events=["ipc://{state_dir}/events.sock"]', "ingest.max_clip_seconds=2.0", "queue.max_clips=1",
        "video.width=64", "video.height=64", 'encoder.preset="ultrafast"', "encoder.video_bitrate=200000",
        "metrics.enabled=false", 'programme.playlist=""', f'outputs=[{{name="rec", url="{out / "rec.flv"}"}}]',
    ], environ={})
    d = Daemon(s)
    d.start()
    try:
        yield d
    finally:
        d.close()
        shutil.rmtree(short, ignore_errors=True)


def ask(endpoint: str, frames: list[bytes]) -> dict:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b""] + frames)
        assert sock.poll(30_000), f"no reply to {frames[0][:60]!r}"
        return json.loads(sock.recv_multipart()[-1])
    finally:
        sock.close(0)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("code", list(DAEMON_CASES))
def test_daemon_code(daemon, code):
    transport, requests, field = DAEMON_CASES[code]
    endpoint = next(e for e in daemon.ingest.control_endpoints if e.startswith(transport))
    for frames in requests[:-1]:
        assert ask(endpoint, frames)["ok"]
    reply = ask(endpoint, requests[-1])
    assert (reply["ok"], reply["code"], reply.get("field")) == (False, code, field), reply
    assert reply["reason"] and SECRET not in json.dumps(reply)
    assert ask(endpoint, [hdr(cmd="ping")])["ok"]  # the daemon goes on serving
    if code == "queue_full":
        assert ask(endpoint, [hdr(cmd="clear")])["ok"]


@pytest.mark.timeout(60)
def test_daemon_serves_the_whole_table_and_image_paths_are_checked(daemon, tmp_path):
    ipc = daemon.ingest.control_endpoints[0]
    from flashtalk_live.ingest.commands import COMMANDS

    assert ask(ipc, [hdr(cmd="ping")])["commands"] == sorted(COMMANDS)
    reply = ask(ipc, [hdr(cmd="set_avatar", image=str(tmp_path / "missing.png"))])
    assert (reply["code"], reply["field"]) == ("bad_image", "image")
    (tmp_path / "junk.png").write_bytes(b"junk")
    assert ask(ipc, [hdr(cmd="set_avatar", image=str(tmp_path / "junk.png"))])["code"] == "bad_image"
    reply = ask(ipc, [hdr(cmd="output_add", name="seg", url="rtmp://h/app/k", segment_seconds=5.0)])
    assert (reply["code"], reply["field"]) == ("bad_output", "segment_seconds")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("code", SERVER_CASES)
def test_server_code(running, code):
    def broken(call):
        raise KeyError("a bug in the handler")

    r = running(handlers={"outputs": broken})
    frames = [hdr(cmd="output_add", name="x", url="/tmp/x.flv")] if code == "unavailable" else [hdr(cmd="outputs")]
    reply = ask(r.ipc, frames)
    assert (reply["ok"], reply["code"]) == (False, code), reply
    assert ask(r.ipc, [hdr(cmd="ping")])["ok"]
