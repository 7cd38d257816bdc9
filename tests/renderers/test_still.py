"""Still renderer and image fitting: cover/contain geometry, the embedded portrait, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from flashtalk_live.renderers.base import Renderer, RendererError
from flashtalk_live.images import (
    BACKGROUND,
    ImageError,
    decode_image_bytes,
    default_portrait,
    encode_png,
    fit_image,
    load_image,
)
from flashtalk_live.renderers.still import StillRenderer
from flashtalk_live.chunks import RenderChunk
from support.chunks import render_chunk


def _quadrants(h: int, w: int) -> np.ndarray:
    """An image whose four quadrants have distinct colours."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = (255, 0, 0)
    img[: h // 2, w // 2 :] = (0, 255, 0)
    img[h // 2 :, : w // 2] = (0, 0, 255)
    img[h // 2 :, w // 2 :] = (255, 255, 0)
    return img


def _chunk(n: int) -> RenderChunk:
    return render_chunk(0, n)


def test_cover_fills_and_crops_centre():
    img = _quadrants(200, 400)  # wide image into a tall frame: the sides are cropped
    out = fit_image(img, 100, 200, "cover")
    assert out.shape == (200, 100, 3) and out.dtype == np.uint8
    # Scaled to 400x200 -> crop x 150..250: the centre column splits red|green on top, blue|yellow below.
    assert tuple(out[10, 10]) == (255, 0, 0) and tuple(out[10, 90]) == (0, 255, 0)
    assert tuple(out[190, 10]) == (0, 0, 255) and tuple(out[190, 90]) == (255, 255, 0)
    assert not np.any(np.all(out == BACKGROUND, axis=-1)), "cover must never letterbox"


def test_contain_letterboxes_on_dark_background():
    img = _quadrants(200, 400)
    out = fit_image(img, 100, 200, "contain")
    assert out.shape == (200, 100, 3)
    # Scaled to 100x50, centred vertically: bars of 75 rows above and below.
    assert np.all(out[:75] == BACKGROUND) and np.all(out[125:] == BACKGROUND)
    assert tuple(out[80, 5]) == (255, 0, 0) and tuple(out[120, 95]) == (255, 255, 0)


def test_same_aspect_is_a_pure_resize_and_identity_is_exact():
    img = _quadrants(64, 32)
    assert np.array_equal(fit_image(img, 32, 64, "cover"), img)
    assert np.array_equal(fit_image(img, 32, 64, "contain"), img)
    assert fit_image(img, 16, 32, "contain").shape == (32, 16, 3)


def test_tall_image_into_wide_frame_cover_crops_top_and_bottom():
    img = np.zeros((400, 100, 3), np.uint8)
    img[:100] = 255  # white top quarter is cropped away by cover into 100x100
    out = fit_image(img, 100, 100, "cover")
    assert out.shape == (100, 100, 3) and out.max() == 0


def test_fit_rejects_bad_input():
    with pytest.raises(ImageError, match="uint8"):
        fit_image(np.zeros((4, 4), np.uint8), 2, 2)
    with pytest.raises(ImageError, match="uint8"):
        fit_image(np.zeros((4, 4, 3), np.float32), 2, 2)
    with pytest.raises(ImageError, match="fit must be"):
        fit_image(np.zeros((4, 4, 3), np.uint8), 2, 2, "stretch")  # type: ignore[arg-type]


def test_png_round_trip_and_file_errors(tmp_path):
    img = _quadrants(30, 40)
    path = tmp_path / "p.png"
    path.write_bytes(encode_png(img))
    assert np.array_equal(load_image(path), img)
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(ImageError, match="bad.png"):
        load_image(bad)


def test_jpeg_decodes_via_pyav(tmp_path):
    import av

    img = np.full((32, 48, 3), (200, 100, 50), np.uint8)
    ctx = av.CodecContext.create("mjpeg", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 48, 32, "yuvj444p"
    frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuvj444p")
    data = b"".join(bytes(p) for p in list(ctx.encode(frame)) + list(ctx.encode(None)))
    (tmp_path / "p.jpg").write_bytes(data)
    out = load_image(tmp_path / "p.jpg")
    assert out.shape == (32, 48, 3)
    assert np.abs(out.astype(int) - img).max() < 12  # lossy, but the colour survives


def test_embedded_portrait_is_a_real_picture():
    img = default_portrait()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] > img.shape[1]  # a portrait
    assert img.std() > 20  # not a flat colour


def test_still_renderer_protocol_and_frames():
    r = StillRenderer(448, 768, "cover")
    assert isinstance(r, Renderer)
    assert not r.ready()
    with pytest.raises(RendererError, match="start_session"):
        r.render(_chunk(2))
    r.start_session(None, "prompt")
    assert r.ready()
    frames = r.render(_chunk(28))
    assert frames.shape == (28, 768, 448, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[0], frames[27])
    assert not frames.flags.writeable  # a shared view: nobody may scribble on it
    assert np.array_equal(frames[5], fit_image(default_portrait(), 448, 768, "cover"))
    r.close()
    assert not r.ready()


def test_still_renderer_contain_with_custom_image():
    r = StillRenderer(64, 64, "contain")
    r.start_session(_quadrants(32, 64), "")
    f = r.render(_chunk(1))[0]
    assert np.all(f[:16] == BACKGROUND) and np.all(f[48:] == BACKGROUND)
    assert tuple(f[20, 5]) == (255, 0, 0)


def test_still_renderer_rejects_bad_geometry():
    with pytest.raises(ValueError, match="even"):
        StillRenderer(447, 768)
    with pytest.raises(ValueError, match="fit"):
        StillRenderer(448, 768, "zoom")  # type: ignore[arg-type]


def test_rgba_png_is_composited_over_background():
    import av

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[:4, :, 3] = 255  # top half opaque white, bottom transparent
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 8, 8, "rgba"
    data = b"".join(bytes(p) for p in list(ctx.encode(av.VideoFrame.from_ndarray(rgba, format="rgba"))) + list(ctx.encode(None)))
    out = decode_image_bytes(data)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[7, 7]) == BACKGROUND
