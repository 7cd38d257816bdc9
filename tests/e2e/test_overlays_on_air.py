"""Overlays on air, read back from the recording of a real daemon: the AI label on every frame, `overlay_show card 3`
on and off, a clip's caption while it airs and gone after it, and the overlay commands' rejections."""

from __future__ import annotations

import time

import numpy as np
import pytest

from flashtalk_live.client import Client, ClientError
from flashtalk_live.compose.compositor import Compositor
from flashtalk_live.images import encode_png

from support.overlays import BG, CARD, H, W, decode, differs, flat_daemon, needs_cjk_font, quiet_tone

pytestmark = needs_cjk_font


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
            ack = c.call("enqueue", quiet_tone(2.0), format="wav", text="欢迎来到直播间，今天的保温杯买一送一")
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
                    c.call(cmd, quiet_tone(0.5) if cmd == "enqueue" else None, **fields)
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
