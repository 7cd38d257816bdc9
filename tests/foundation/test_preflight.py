"""`config show` checks what `run` needs, and both answer an operator's mistake with exit 2 and one line: files the
config names (portrait, playlist, weights, font, layer images), a refused plain-tcp bind, a busy port or socket."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
PORTRAIT = ROOT / "flashtalk_live" / "assets" / "portrait.png"


@pytest.fixture
def etc() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="ftl-pre-", dir="/tmp"))  # short: ipc paths stay under 107 bytes
    shutil.copy(PORTRAIT, d / "portrait.png")
    (d / "playlist.m3u").write_text("#EXTM3U\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _config(etc: Path, *lines: str) -> Path:
    cfg = etc / "room.toml"
    cfg.write_text("\n".join([
        'state_dir = "state"', "[programme]", 'playlist = "playlist.m3u"', "[video]",
        'reference_image = "portrait.png"', "[metrics]", "port = 0", "[[outputs]]", 'name = "rec"',
        'url = "{state_dir}/rec.flv"', *lines]) + "\n")
    return cfg


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flashtalk_live", *args], capture_output=True, text=True, timeout=120)


def _both_refuse(cfg: Path, *extra: str) -> str:
    """config show and run give the same one line with exit 2; the line is returned."""
    lines = []
    for verb in (["config", "show"], ["run", "--duration", "1"]):
        r = _cli(*verb, "-c", str(cfg), *extra)
        assert r.returncode == 2, (verb, r.returncode, r.stderr[-2000:])
        out = r.stderr.strip().splitlines()
        assert len(out) == 1 and out[0].startswith("flashtalk-live: "), r.stderr[-2000:]
        assert "Error:" not in out[0], out[0]  # no exception class in front of an operator's message
        lines.append(out[0])
    assert lines[0] == lines[1]
    return lines[0]


def test_a_complete_room_passes(etc):
    r = _cli("config", "show", "-c", str(_config(etc)))
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("missing,field", [("portrait.png", "video.reference_image"),
                                           ("playlist.m3u", "programme.playlist")])
def test_missing_portrait_or_playlist(etc, missing, field):
    cfg = _config(etc)
    (etc / missing).unlink()
    line = _both_refuse(cfg)
    assert field in line and str(etc / missing) in line and "no such file" in line


def test_unreadable_portrait_and_playlist(etc):
    (etc / "portrait.png").write_bytes(b"not an image")
    line = _both_refuse(_config(etc))
    assert "video.reference_image" in line and "PNG or JPEG" in line
    shutil.copy(PORTRAIT, etc / "portrait.png")
    (etc / "playlist.toml").write_text("[[clip]\n")
    line = _both_refuse(_config(etc), "--set", f'programme.playlist="{etc / "playlist.toml"}"')
    assert "programme.playlist" in line and "not valid TOML" in line


def test_missing_weights_font_and_layer_image(etc):
    line = _both_refuse(_config(etc), "--set", 'renderer.kind="flashtalk"', "--set", "model.profile=\"realtime\"",
                        "--set", f'model.weights_dir="{etc / "models"}"')
    assert "model.weights_dir" in line and "no such folder" in line and "models download" in line
    line = _both_refuse(_config(etc), "--set", f'overlays.font="{etc / "nofont.ttc"}"')
    assert "overlays.font" in line and "no such file" in line
    (etc / "bad.ttf").write_bytes(b"nope")
    line = _both_refuse(_config(etc), "--set", f'overlays.font="{etc / "bad.ttf"}"')
    assert "not a usable font" in line
    cfg = _config(etc, "[[overlays.layers]]", 'name = "logo"', 'image = "logo.png"')
    line = _both_refuse(cfg)
    assert "overlays.layers[0].image" in line and str(etc / "logo.png") in line


def test_plain_tcp_beyond_loopback_is_a_config_error(etc):
    line = _both_refuse(_config(etc), "--set", 'ingest.tcp_auth="none"',
                        "--set", 'ingest.control=["ipc://{state_dir}/c.sock", "tcp://0.0.0.0:0"]')
    assert "refusing to bind tcp://0.0.0.0:0 without authentication" in line


def test_busy_metrics_port(etc):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        line = _both_refuse(_config(etc), "--set", f"metrics.port={port}")
    assert f"metrics.port = {port}" in line and "in use" in line and "metrics.port = 0" in line


def test_state_dir_that_cannot_be_a_folder(etc):
    (etc / "afile").write_text("")
    line = _both_refuse(_config(etc), "--set", f'state_dir="{etc / "afile" / "state"}"')
    assert "state_dir" in line and "is not a folder" in line
