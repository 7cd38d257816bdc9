"""Overlays on air, read back from the recording of a real daemon: the AI label on every frame, `overlay_show card 3`
on and off, a clip's caption while it airs and gone after it, and the overlay commands' rejections."""

from __future__ import annotations

import time
from typing import Any

import av
import numpy as np
import pytest

from flashtalk_live.client import Client, ClientError
from flashtalk_live.compose.compositor import Compositor
from flashtalk_live.compose.text import FONT_CANDIDATES
from flashtalk_live.daemon import Daemon
from flashtalk_live.images import encode_png
from flashtalk_live.config import load_settings

W, H = 288, 512
BG = (90, 110, 130)
CARD = (240, 40, 200)
pytestmark = pytest.mark.skipif(not any(__import__("os").path.isfile(p) for p, _ in FONT_CANDIDATES),
                                reason="no CJK font on this machine (.ci/run installs fonts-noto-cjk)")
from support.audio import wav_bytes as support_wav
from support.fakes import PaintRenderer


def wav_bytes(seconds: float, rate: int = 16000) -> bytes:
    return support_wav(seconds, 220.0, rate, amplitude=0.3)


def decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def differs(region: np.ndarray, colour, tol: int = 40) -> np.ndarray:
    """Per frame: whether any pixel of region [n, h, w, 3] is far from `colour`."""
    return (np.abs(region.astype(int) - np.array(colour)).max(axis=-1) > tol).reshape(len(region), -1).any(axis=1)


def flat_daemon(tmp_path, *overrides: str) -> tuple[Daemon, Any, dict[str, int], np.ndarray]:
    """A daemon (not started) airing a flat background into tmp_path/rec.flv, with the frame of each clip's
    `started` / `finished` event recorded in `marks`, and a plain CARD-coloured card picture."""
    s = load_settings(None, [
        f'state_dir="{tmp_path / "state"}"',
        'ingest.control=["ipc://{state_dir}/control.sock"]', 'ingest.events=["ipc://{state_dir}/events.sock"]',
        f"video.width={W}", f"video.height={H}", 'encoder.preset="ultrafast"', "encoder.video_bitrate=600000",
        "metrics.enabled=false", f'outputs=[{{name="rec", url="{tmp_path / "rec.flv"}"}}]', 'programme.playlist=""',
        "renderer.lookahead_chunks=2", *overrides,
    ], environ={})
    d = Daemon(s, still=PaintRenderer(W, H, name="flat", colour=lambda i: BG))
    marks: dict[str, int] = {}
    d.events.subscribe(lambda e: marks.__setitem__(f"{e['type']}:{e.get('segment_id')}", e["frame"])
                       if e["type"] in ("started", "finished") else None)
    card = np.zeros((60, 80, 3), np.uint8)
    card[:] = CARD
    return d, s, marks, card


@pytest.mark.timeout(180)
def test_label_card_and_caption_on_air_from_the_recording(tmp_path):
    d, s, marks, card = flat_daemon(tmp_path)
    d.start()
    try:
        with Client(f"ipc://{tmp_path / 'state'}/control.sock") as c:
            time.sleep(1.0)
            assert c.call("overlay_set", encode_png(card), name="card", anchor="center", fade_s=0.0)["ok"]
            before = d.encoder.frames
            assert c.call("overlay_show", name="card", seconds=3.0)["ok"]
            after = d.encoder.frames
            time.sleep(3.5)
            ack = c.call("enqueue", wav_bytes(2.0), format="wav", text="欢迎来到直播间，今天的保温杯买一送一")
            sid = ack["segment_id"]
            t_end = time.monotonic() + 15
            while f"finished:{sid}" not in marks and time.monotonic() < t_end:
                time.sleep(0.1)
            time.sleep(1.0)
            for cmd, fields, code in [
                ("overlay_show", {"name": "nope"}, "unknown_layer"),
                ("overlay_hide", {"name": "nope"}, "unknown_layer"),
                ("overlay_set", {"name": "x", "text": "字" * (s.ingest.max_text_chars + 1)}, "text_too_long"),
                ("enqueue", {"text": "字" * (s.ingest.max_text_chars + 1), "format": "wav"}, "text_too_long"),
            ]:
                with pytest.raises(ClientError) as e:
                    c.call(cmd, wav_bytes(0.5) if cmd == "enqueue" else None, **fields)
                assert e.value.code == code, (cmd, e.value)
            for data, code in [(b"not an image", "unsupported_image"),
                               (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x10\0\0\0\x10" + b"\0" * 30, "undecodable_image"),
                               (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\1\0\0\0\1\0\0" + b"\0" * 30,
                                "image_too_many_pixels")]:
                with pytest.raises(ClientError) as e:
                    c.call("overlay_set", data, name="card")
                assert e.value.code == code
    finally:
        d.close()
    frames = decode(tmp_path / "rec.flv")
    assert f"started:{sid}" in marks and f"finished:{sid}" in marks

    # The AI label: its rectangle matches the compositor's own drawing on every frame (top right, CJK glyphs).
    ref = Compositor(s.overlays, W, H, s.video.fps).compose(np.broadcast_to(np.array(BG, np.uint8), (H, W, 3)), 0)
    ys, xs = np.nonzero((ref != BG).any(axis=2))
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    assert ys.max() < H // 4 and xs.min() > W // 2
    err = np.abs(frames[:, box[0], box[1]].astype(int) - ref[box].astype(int)).mean(axis=(1, 2, 3))
    tofu_settings = s.overlays.model_copy(update={"ai_label": s.overlays.ai_label.model_copy(
        update={"text": "AI\ue000\ue000"})})
    tofu = Compositor(tofu_settings, W, H, s.video.fps).compose(np.broadcast_to(np.array(BG, np.uint8), (H, W, 3)), 0)
    tofu_err = np.abs(tofu[box].astype(int) - ref[box].astype(int)).mean()
    print(f"\nlabel: mean abs error per frame max {err.max():.2f}, tofu would be {tofu_err:.2f}")
    assert err.max() < min(12.0, tofu_err / 2)

    # The card: on air from the command's aired frame (within one frame) for exactly 3 s (75 frames).
    centre = frames[:, H // 2 - 20:H // 2 + 20, W // 2 - 30:W // 2 + 30]
    on = np.nonzero(differs(centre, BG))[0]
    assert on.size and np.all(np.diff(on) == 1), on
    assert before <= on[0] <= after + 1, (before, after, on[0])
    assert len(on) == 3 * s.video.fps
    assert np.abs(centre[on].astype(int) - CARD).max() < 40  # the card's own colour, not a smear

    # The caption: in the caption band while the clip airs, none 0.5 s after it ends.
    band = frames[:, H - s.overlays.caption_margin - 70:H - s.overlays.caption_margin]
    start, end = marks[f"started:{sid}"], marks[f"finished:{sid}"]
    cap = differs(band, BG)
    assert cap[start:end - 1].all(), np.nonzero(~cap[start:end - 1])
    assert not cap[:start].any()
    half = s.video.fps // 2
    assert not cap[end + half:].any()
