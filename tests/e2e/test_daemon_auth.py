"""The daemon's trust rules and image limits over its real sockets: a tcp peer cannot name server files or add
outputs, image bytes work, a pixel bomb is refused before decoding without growing RSS, paths stay inside the
configured folders, and the outputs are capped."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

import flashtalk_live.images as images
from flashtalk_live.client import Client, Rejected
from flashtalk_live.daemon import Daemon
from flashtalk_live.config import load_settings

from support.images import png_bomb
from support.rtmp_harness import free_port


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def short_dir():
    d = Path(tempfile.mkdtemp(prefix="ftl-", dir="/tmp"))  # ipc paths must stay short
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(120)
def test_tcp_peer_cannot_touch_the_server_but_sends_images(short_dir, monkeypatch):
    avatars, outside = short_dir / "avatars", short_dir / "outside"
    avatars.mkdir()
    outside.mkdir()
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 230
    (avatars / "red.png").write_bytes(images.encode_png(red))
    (outside / "secret.png").write_bytes(images.encode_png(red))
    port = free_port()
    s = load_settings(None, [
        f'state_dir="{short_dir / "state"}"', 'ingest.tcp_auth="none"',
        f'ingest.control=["ipc://{{state_dir}}/control.sock", "tcp://127.0.0.1:{port}"]',
        'ingest.events=["ipc://{state_dir}/events.sock"]', f'ingest.avatar_dirs=["{avatars}"]',
        "video.width=128", "video.height=128", 'encoder.preset="ultrafast"', "encoder.video_bitrate=300000",
        "metrics.enabled=false", "output_policy.max_outputs=2",
        f'outputs=[{{name="rec", url="{{state_dir}}/recordings/rec.flv"}}]',
    ], environ={})
    decodes = []
    real_decode = images.decode_image_bytes
    monkeypatch.setattr(images, "decode_image_bytes", lambda *a, **k: decodes.append(1) or real_decode(*a, **k))
    d = Daemon(s)
    d.start()
    decodes.clear()  # the demo portrait at start
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout_s=10) as remote, \
                Client(f"ipc://{short_dir / 'state'}/control.sock", timeout_s=10) as local:
            for cmd, fields in (("set_avatar", {"image": str(avatars / "red.png")}),
                                ("output_add", {"name": "x", "url": str(short_dir / "state/recordings/x.flv")}),
                                ("output_add", {"name": "y", "url": "rtmp://example.com/live/key"}),
                                ("output_remove", {"name": "rec"})):
                with pytest.raises(Rejected) as ei:
                    remote.call(cmd, **fields)
                assert ei.value.code == "unauthorized", (cmd, ei.value)
            assert remote.call("set_avatar", images.encode_png(red), prompt="red")["ok"]  # bytes: fine
            assert len(decodes) == 1

            # the pixel bomb: refused from its header, nothing decoded, RSS flat, the others still served
            bomb = png_bomb(16000, 16000)
            before = rss_bytes()
            with pytest.raises(Rejected) as ei:
                remote.call("set_avatar", bomb)
            grown = rss_bytes() - before
            assert ei.value.code == "image_too_many_pixels"
            assert len(decodes) == 1 and grown < 50 * 2**20, grown
            assert local.status()["state"] in ("starting", "on_air")
            for junk, code in ((b"GIF89a" + bytes(64), "unsupported_image"),
                               (b"\x89PNG\r\n\x1a\n" + images.encode_png(red)[8:40] + b"broken", "undecodable_image")):
                with pytest.raises(Rejected) as ei:
                    remote.call("set_avatar", junk)
                assert ei.value.code == code, ei.value

            # a trusted (ipc) peer: paths only inside ingest.avatar_dirs, one answer for missing and forbidden
            assert local.call("set_avatar", image="red.png")["ok"]
            reasons = set()
            for bad in (str(outside / "secret.png"), "../outside/secret.png", "missing.png", "/etc/shadow"):
                with pytest.raises(Rejected) as ei:
                    local.call("set_avatar", image=bad)
                assert ei.value.code == "forbidden_path"
                reasons.add(ei.value.reason)
            assert len(reasons) == 1
            # file outputs only inside output_policy.file_dirs; at most output_policy.max_outputs
            with pytest.raises(Rejected) as ei:
                local.call("output_add", name="evil", url=str(outside / "x.flv"))
            assert ei.value.code == "forbidden_path"
            assert local.call("output_add", name="x", url=str(short_dir / "state/recordings/x.flv"))["ok"]
            with pytest.raises(Rejected) as ei:
                local.call("output_add", name="z", url=str(short_dir / "state/recordings/z.flv"))
            assert ei.value.code == "too_many_outputs"
            assert [o["name"] for o in local.call("outputs")["outputs"]] == ["rec", "x"]
    finally:
        d.close()
