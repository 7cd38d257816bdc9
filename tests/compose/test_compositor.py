"""The compositor's blending (alpha, opacity, fades) against a float numpy reference; placement; CJK text against
the font rendered directly; commands' checks (unknown layer, too many layers, undecodable image)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from flashtalk_live.compose.compositor import AI_LABEL, Compositor, blend, make_patch, place
from flashtalk_live.compose.text import FONT_CANDIDATES, TextStyle, covers, find_font, load_font, render_text
from flashtalk_live.errors import Rejection
from flashtalk_live.images import encode_png
from flashtalk_live.settings import LayerSettings, OverlaySettings

W, H, FPS = 96, 160, 25
CJK_FONTS = [p for p, _ in FONT_CANDIDATES if __import__("os").path.isfile(p)]
needs_cjk = pytest.mark.skipif(not CJK_FONTS, reason="no CJK font on this machine (.ci/run installs fonts-noto-cjk)")


def rgba_png(rgba: np.ndarray) -> bytes:
    import av

    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = rgba.shape[1], rgba.shape[0], "rgba"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgba), format="rgba")
    return b"".join(bytes(p) for p in list(ctx.encode(frame)) + list(ctx.encode(None)))


def reference(frame: np.ndarray, rgba: np.ndarray, x: int, y: int, opacity: float) -> np.ndarray:
    out = frame.astype(np.float64)
    a = rgba[..., 3:4] / 255.0 * opacity
    h, w = rgba.shape[:2]
    out[y:y + h, x:x + w] = out[y:y + h, x:x + w] * (1 - a) + rgba[..., :3] * a
    return out


def random_rgba(rng, h, w):
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 255  # the crop to the visible box keeps the full size
    rgba[-1, -1, 3] = 255
    return rgba


@pytest.mark.parametrize("opacity", [1.0, 0.6, 0.0])
def test_blend_matches_float_reference(opacity):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgba = random_rgba(rng, 30, 40)
    patch = make_patch(rgba, 10, 20, W, H)
    out = frame.copy()
    blend(out, patch, opacity)
    diff = np.abs(out.astype(np.float64) - reference(frame, rgba, 10, 20, opacity))
    assert diff.max() <= 0.5 + 1e-3  # rounding only
    assert np.array_equal(out[:20], frame[:20]) and np.array_equal(out[:, :10], frame[:, :10])  # outside untouched


def test_patch_is_clipped_to_the_frame_and_cropped_to_its_visible_box():
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[5:8, 6:9] = (255, 0, 0, 255)
    p = make_patch(rgba, -3, H - 6, W, H)
    assert (p.x, p.y, p.shape) == (3, H - 1, (1, 3))
    assert make_patch(rgba, W, 0, W, H) is None


@pytest.mark.parametrize("anchor,xy", [("top_left", (5, 7)), ("top_right", (W - 10 - 5, 7)),
                                       ("bottom", ((W - 10) // 2, H - 4 - 7)), ("center", ((W - 10) // 2, (H - 4) // 2))])
def test_place(anchor, xy):
    assert place(anchor, (5, 7), 10, 4, W, H) == xy


def test_place_inside_the_safe_area():
    safe = (0.25, 0.1, 0.5, 0.2)  # top, right, bottom, left
    top, right, bottom, left = round(0.25 * H), round(0.1 * W), round(0.5 * H), round(0.2 * W)
    assert place("top_left", (5, 7), 10, 4, W, H, safe) == (left + 5, top + 7)
    assert place("bottom_right", (5, 7), 10, 4, W, H, safe) == (W - right - 10 - 5, H - bottom - 4 - 7)
    assert place("center", (0, 0), 10, 4, W, H, safe) == (left + (W - right - left - 10) // 2,
                                                          top + (H - bottom - top - 4) // 2)
    with pytest.raises(ValueError, match="safe_area"):
        OverlaySettings(safe_area=(0.5, 0, 0.5, 0))


def test_layers_keep_to_the_safe_area_unless_told_not_to(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 255
    for inside, want in ((True, (round(0.1 * W), round(0.2 * H))), (False, (0, 0))):
        path = tmp_path / f"l{inside}.png"
        path.write_bytes(rgba_png(rgba))
        s = OverlaySettings(ai_label_enabled=False, safe_area=(0.2, 0.0, 0.0, 0.1),
                            layers=[LayerSettings(name="l", image=str(path), margin=(0, 0), in_safe_area=inside)])
        c = Compositor(s, W, H, FPS)
        c.show("l", None)
        out = c.compose(np.zeros((H, W, 3), np.uint8), 0)
        ys, xs = np.nonzero(out[..., 0])
        assert (xs.min(), ys.min()) == want, inside


def image_layer_compositor(tmp_path, rgba, **spec):
    path = tmp_path / "logo.png"
    path.write_bytes(rgba_png(rgba))
    s = OverlaySettings(ai_label_enabled=False, layers=[LayerSettings(name="logo", image=str(path), **spec)])
    return Compositor(s, W, H, FPS)


def test_image_layer_with_alpha_and_opacity_matches_reference(tmp_path):
    rng = np.random.default_rng(2)
    rgba = random_rgba(rng, 24, 32)
    c = image_layer_compositor(tmp_path, rgba, anchor="top_left", margin=(4, 6), opacity=0.5)
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    out = c.compose(frame, 0)
    assert np.abs(out - reference(frame, rgba, 4, 6, 0.5)).max() <= 0.5 + 1e-3
    assert out is not frame and frame.flags.writeable  # the input frame is never drawn on


def test_timed_show_fades_in_and_out_linearly(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    c = image_layer_compositor(tmp_path, rgba, anchor="top_left", margin=(0, 0), fade_s=0.2, visible=False)
    frame = np.zeros((H, W, 3), np.uint8)
    assert c.compose(frame, 0)[0, 0, 0] == 0  # defined but off air
    c.show("logo", 1.0)
    seen = [int(c.compose(frame, n)[5, 5, 0]) for n in range(10, 40)]
    fade = round(0.2 * FPS)  # 5 frames
    want = [round(255 * min(1, (k + 1) / fade, max(0, (25 - k) / fade))) for k in range(30)]
    assert seen == want  # in over 5 frames from the next aired frame, fully gone 1 s (25 frames) after it
    assert c.status()["on_air"] == []


def test_hide_fades_out_and_unknown_names_are_rejected(tmp_path):
    rgba = np.full((10, 10, 4), 255, np.uint8)
    c = image_layer_compositor(tmp_path, rgba, fade_s=0.0)
    frame = np.zeros((H, W, 3), np.uint8)
    assert c.compose(frame, 0).any()
    c.hide("logo")
    assert not c.compose(frame, 1).any()
    with pytest.raises(Rejection) as e:
        c.show("nope")
    assert e.value.code == "unknown_layer" and "logo" in e.value.reason
    with pytest.raises(Rejection) as e:
        c.hide("nope")
    assert e.value.code == "unknown_layer"


def test_set_defines_layers_up_to_the_limit_and_rejects_bad_images():
    c = Compositor(OverlaySettings(ai_label_enabled=False, max_layers=2), W, H, FPS)
    frame = np.zeros((H, W, 3), np.uint8)
    card = np.zeros((20, 30, 3), np.uint8)
    card[:] = (0, 0, 255)
    r = c.set("card", image=encode_png(card), anchor="bottom_left", margin=(0, 0), fade_s=0.0)
    assert r["size"] == [30, 20]
    assert not c.compose(frame, 0).any()  # a new layer starts off air
    c.show("card")
    out = c.compose(frame, 1)
    assert (out[H - 20:, :30] == (0, 0, 255)).all() and not out[:H - 20].any()
    c.set("note", text="hi")
    with pytest.raises(Rejection) as e:
        c.set("third", text="x")
    assert e.value.code == "too_many_layers"
    with pytest.raises(Rejection) as e:
        c.set("card", image=b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    assert e.value.code == "undecodable_image"


@needs_cjk
def test_cjk_text_renders_as_the_font_draws_it_not_boxes():
    path, idx = find_font()
    font = load_font(path, idx, 32)
    assert covers(font, "AI生成直播")
    rgba = render_text("AI生成", font, TextStyle(32, (255, 255, 255), outline=0))
    # The font drawn directly by Pillow, on the same canvas
    direct = Image.new("L", (rgba.shape[1], rgba.shape[0]), 0)
    ImageDraw.Draw(direct).text(((rgba.shape[1] - font.getlength("AI生成")) / 2, 0), "AI生成", font=font, fill=255)
    assert np.abs(rgba[..., 3].astype(int) - np.asarray(direct, int)).max() <= 1
    tofu = Image.new("L", direct.size, 0)
    ImageDraw.Draw(tofu).text((0, 0), "AI\ue000\ue000", font=font, fill=255)
    assert np.abs(rgba[..., 3].astype(int) - np.asarray(tofu, int)).mean() > 10


@needs_cjk
def test_ai_label_is_on_by_default_top_right():
    c = Compositor(OverlaySettings(), 448, 768, FPS)
    assert AI_LABEL in c.names()
    frame = np.full((768, 448, 3), 200, np.uint8)
    changed = np.nonzero((c.compose(frame, 0) != 200).any(axis=2))
    assert changed[0].max() < 100 and changed[1].min() > 448 // 2


@needs_cjk
def test_captions_split_into_lines_timed_by_characters():
    c = Compositor(OverlaySettings(ai_label_enabled=False, caption_font_size=20), W * 2, H * 2, FPS)
    c.note_clip("s1", "一二三四五六七八九十一二三四五六七八九十", 2.0)
    c.prepare(["s1"])
    assert c.wait_prepared("s1")  # drawn on the compositor's caption thread
    lines = c._captions["s1"]
    assert len(lines) >= 2 and lines[0][0] == 0 and lines[-1][1] == 50
    assert all(a[1] == b[0] for a, b in zip(lines, lines[1:]))  # back to back, by characters
    frame = np.zeros((H * 2, W * 2, 3), np.uint8)
    shown = [c.compose(frame, n, "s1").any() for n in range(50)]
    assert all(shown)
    assert not c.compose(frame, 50, None).any()


def card_compositor(fade_s: float = 0.0) -> Compositor:
    c = Compositor(OverlaySettings(ai_label_enabled=False), W, H, FPS)
    card = np.zeros((20, 30, 3), np.uint8)
    card[:] = (0, 0, 255)
    c.set("card", image=encode_png(card), anchor="top_left", margin=(0, 0), fade_s=fade_s)
    return c


def test_overlay_cue_shows_a_layer_for_its_span_of_the_clip_on_air():
    c = card_compositor()
    c.note_clip("s1", "", 3.0, overlays=[{"name": "card", "start": 1.0, "end": 2.0}])
    frame = np.zeros((H, W, 3), np.uint8)
    n0 = 200  # the clip's first aired frame: cue times count from it, not from when the clip was queued
    for n in range(n0):
        assert not c.compose(frame, n, None).any()
    shown = [bool(c.compose(frame, n0 + k, "s1")[5, 5, 2]) for k in range(75)]
    assert [k for k, on in enumerate(shown) if on] == list(range(25, 50))
    assert c.status()["on_air"] == []  # a cue is not a standing show
    assert not c.compose(frame, n0 + 75, "s2").any()  # the next clip: no cues of its own


def test_overlay_cue_fades_like_a_timed_show_and_ends_with_its_clip():
    c = card_compositor(fade_s=0.2)  # 5 frames
    c.note_clip("s1", "", 3.0, overlays=[{"name": "card", "start": 0.0, "end": 1.0}])
    frame = np.zeros((H, W, 3), np.uint8)
    seen = [int(c.compose(frame, k, "s1")[5, 5, 2]) for k in range(30)]
    assert seen == [round(255 * min(1, (k + 1) / 5, max(0, (25 - k) / 5))) for k in range(30)]
    c.note_clip("s2", "", 3.0, overlays=[{"name": "card", "start": 0.0, "end": 3.0}])
    c.note_clip("s3", "", 3.0)
    assert c.compose(frame, 30, "s2")[5, 5, 2] > 0
    assert not c.compose(frame, 31, "s3").any()  # s2 was cut: its cue goes with it


@needs_cjk
def test_caption_cue_times_are_honoured():
    c = Compositor(OverlaySettings(ai_label_enabled=False, caption_font_size=20), W * 2, H * 2, FPS)
    c.note_clip("s1", "全文不按字数计时", 3.0, captions=[{"text": "一二", "start": 0.4, "end": 1.0},
                                                     {"text": "三四五", "start": 2.0, "end": 2.6}])
    c.prepare(["s1"])
    assert c.wait_prepared("s1")
    frame = np.zeros((H * 2, W * 2, 3), np.uint8)
    outs = [c.compose(frame, 500 + k, "s1") for k in range(75)]
    shown = [k for k, o in enumerate(outs) if o.any()]
    assert shown == list(range(10, 25)) + list(range(50, 65))
    assert not np.array_equal(outs[10], outs[50])  # each cue its own text
    assert all(np.array_equal(outs[10], outs[k]) for k in range(10, 25))


@needs_cjk
def test_a_clip_prepared_ahead_keeps_its_captions_when_the_clip_before_it_airs():
    c = Compositor(OverlaySettings(ai_label_enabled=False, caption_font_size=20), W * 2, H * 2, FPS)
    c.note_clip("a", "甲", 1.0)
    c.note_clip("b", "乙", 1.0)
    c.prepare(["a", "b"])  # one rendered chunk holding both clips' frames
    assert c.wait_prepared("a") and c.wait_prepared("b")
    frame = np.zeros((H * 2, W * 2, 3), np.uint8)
    assert c.compose(frame, 0, "a").any()
    assert c.compose(frame, 25, "b").any()


@needs_cjk
def test_captions_prepared_for_clips_that_never_air_are_forgotten_oldest_first():
    from flashtalk_live.compose.compositor import MAX_PREPARED_CLIPS

    c = Compositor(OverlaySettings(ai_label_enabled=False, caption_font_size=12), W, H, FPS)
    sids = [f"s{i}" for i in range(MAX_PREPARED_CLIPS + 5)]
    for sid in sids:
        c.note_clip(sid, "字", 0.2)
        c.prepare([sid])  # cancelled before air: never composed
        assert c.wait_prepared(sid)
    assert list(c._captions) == sids[-MAX_PREPARED_CLIPS:]


def test_text_larger_than_the_frame_is_drawn_only_where_it_shows_and_past_the_limit_refused():
    c = Compositor(OverlaySettings(ai_label_enabled=False, max_layer_pixels=4_000_000), W, H, FPS)
    size = c.set("big", text="W" * 60, font_size=120, width=2000, anchor="top_left", margin=(0, 0))["size"]
    assert size[0] <= W and size[1] <= H  # cropped to the frame before anything was drawn
    with pytest.raises(Rejection) as ei:
        c.set("bomb", text="W" * 500, font_size=400, width=8192)
    assert ei.value.code == "text_too_large" and ei.value.field == "text"


def test_a_config_layer_image_past_the_pixel_limit_is_a_config_error(tmp_path):
    from flashtalk_live.settings import ConfigError
    from support.images import png_bomb

    (tmp_path / "logo.png").write_bytes(png_bomb(3000, 3000))
    s = OverlaySettings(ai_label_enabled=False, layers=[LayerSettings(name="logo", image=str(tmp_path / "logo.png"))])
    with pytest.raises(ConfigError, match="logo"):
        Compositor(s, W, H, FPS, max_image_pixels=1_000_000)


def test_caption_budget_counts_clips_until_they_air_or_are_forgotten():
    c = Compositor(OverlaySettings(ai_label_enabled=False, caption_budget_bytes=3_000_000), W * 2, H * 2, FPS)
    cost = c.check_captions("字" * 20)
    assert cost > 1_000_000
    c.note_clip("a", "字" * 20, 2.0)
    c.note_clip("b", "字" * 20, 2.0)
    with pytest.raises(Rejection) as ei:
        c.check_captions("字" * 20)
    assert ei.value.code == "captions_over_budget"
    c.forget("a")  # cancelled before it aired
    assert c.check_captions("字" * 20) == cost


def _air(c: Compositor, slots: list[tuple[str | None, bool]]) -> list[np.ndarray]:
    """Run the broadcast loop over paced slots (segment_id, underrun) with a fake encoder and outputs: what aired."""
    from flashtalk_live.media.broadcast import Broadcast
    from flashtalk_live.playout.pacing import PacedFrame

    frame = np.zeros((H, W, 3), np.uint8)
    silence = np.zeros((1920, 2), np.float32)
    paced = [PacedFrame(n, frame, silence, (), held, None if held else n, sid) for n, (sid, held) in enumerate(slots)]

    class Enc:
        audio_samples_in = frames = 0

        def encode(self, f, a):
            return []

        def flush(self):
            return []

    class Outs:
        def send(self, packets):
            pass

    aired: list[np.ndarray] = []
    Broadcast(iter(paced), c, Enc(), Outs(), fps=FPS, audio_rate=48000, tap=lambda f, a: aired.append(f),
              on_frame=lambda *a: None, on_air=lambda: None).run()
    return aired


def test_overlay_cue_keeps_to_the_clips_frames_across_an_underrun():
    """A stall inside a clip holds its last frame and delays its audio (never skips it); the pacer's held frames
    carry the clip's segment_id. Cues count the clip's own aired frames and an underrun's held frames belong to no
    clip (docs/overlays.md), so they must neither show its cues nor advance them (they did both: the cue after the
    stall showed as many frames early as the stall was long, ahead of the words it goes with)."""
    c = card_compositor()
    c.note_clip("s1", "", 3.0, overlays=[{"name": "card", "start": 0.2, "end": 0.8},
                                         {"name": "card", "start": 1.0, "end": 2.0}])
    stall = 10
    slots = [("s1", False)] * 10 + [("s1", True)] * stall + [("s1", False)] * 65
    aired = _air(c, slots)
    shown = [k for k, f in enumerate(aired) if f[5, 5, 2]]
    # clip frames 5..19 and 25..49, wherever they aired: the stall (aired 10..19) between clip frames 9 and 10
    assert shown == list(range(5, 10)) + list(range(10 + stall, 20 + stall)) + list(range(25 + stall, 50 + stall))


def test_a_clip_cut_by_play_now_replays_with_its_overlay_cues():
    """play_now cuts the clip on air and it replays from its start under the same segment_id after the play_now
    clip (docs/broadcast.md). Its cues must show on the replay too (they did not: the compositor forgot the clip as
    soon as another one aired)."""
    c = card_compositor()
    c.note_clip("a", "", 3.0, overlays=[{"name": "card", "start": 0.0, "end": 1.0}])
    c.note_clip("b", "", 1.0)
    frame = np.zeros((H, W, 3), np.uint8)
    assert all(c.compose(frame, k, "a")[5, 5, 2] for k in range(10))  # cut after 10 frames
    assert not any(c.compose(frame, 10 + k, "b").any() for k in range(25))  # the play_now clip
    replay = [bool(c.compose(frame, 35 + k, "a")[5, 5, 2]) for k in range(40)]
    assert [k for k, on in enumerate(replay) if on] == list(range(25))
