"""Portrait images: decode PNG/JPEG/WebP with PyAV into uint8 RGB, fit them to the output geometry, load the demo
portrait.

Images are bounded by what they decode to, not by what their headers say: PNG, JPEG and WebP bytes go straight to
their libavcodec decoder (no demuxer probe, which would decode the picture once more to learn its size) with the
decoder's own `max_pixels` set, so a picture past the cap is refused by the decoder before its frame is allocated,
whatever size a container header (a WebP VP8X canvas, say) declared. `ImageTooLarge` says so.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any, Literal

import av
import numpy as np

FitMode = Literal["cover", "contain"]

# Letterbox colour for `contain`: a dark studio grey rather than pure black, so bars read as deliberate.
BACKGROUND = (18, 18, 22)


# Pixels a picture may decode to when the caller names no cap (ingest.max_image_pixels' default).
DEFAULT_MAX_PIXELS = 25_000_000
# The libavcodec decoder of each image format we decode from bytes.
IMAGE_CODECS = {"png": "png", "jpeg": "mjpeg", "webp": "webp"}


class ImageError(ValueError):
    """An image file that cannot be read as a picture."""


class ImageTooLarge(ImageError):
    """A picture whose decoder reports more pixels than allowed; nothing that size was decoded."""


def sniff_format(data: bytes) -> str | None:
    """png, jpeg or webp from the first bytes; None for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def decoder_cap(max_pixels: int) -> int:
    """libavcodec checks its frame buffer, whose width is padded to 64, against max_pixels: a picture just within
    the cap but not 64 wide would be refused. The decoder gets an eighth more (at least 64 KPx) as room for that
    padding; the picture it returns is then checked against the cap itself."""
    return int(max_pixels) + max(int(max_pixels) // 8, 65536)


def decode_frame_capped(data: bytes, what: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> av.VideoFrame:
    """The first picture of PNG/JPEG/WebP bytes, decoded by its libavcodec decoder with `max_pixels` set: the
    decoder refuses a larger picture (its bitstream's real size, not a container's claim) before allocating it."""
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError(f"{what}: not PNG, JPEG or WebP")
    ctx: Any = av.CodecContext.create(IMAGE_CODECS[fmt], "r")  # a video decoder: PyAV's stubs type it as the base
    ctx.options = {"max_pixels": str(decoder_cap(max_pixels))}
    try:
        frames = ctx.decode(av.Packet(data))
        if not frames:
            frames = ctx.decode(None)
    except av.error.ArgumentError:  # EINVAL: av_image_check_size2 against max_pixels (ff_set_dimensions)
        raise ImageTooLarge(f"{what}: its {fmt} decoder reports more than {max_pixels} pixels") from None
    except av.error.FFmpegError as e:
        raise ImageError(f"{what}: not a readable image ({e})") from None
    if not frames:
        raise ImageError(f"{what}: no decodable picture")
    frame = frames[0]
    if frame.width * frame.height > max_pixels:  # belt and braces: a decoder that does not honour max_pixels
        raise ImageTooLarge(f"{what}: decodes to {frame.width}x{frame.height}, more than {max_pixels} pixels")
    return frame


def _decode(container: av.container.InputContainer, what: str) -> np.ndarray:
    # Composite transparency over the letterbox colour instead of showing whatever RGB hides under alpha=0.
    return _flatten(_decode_rgba(container, what))


def _decode_rgba(container: av.container.InputContainer, what: str) -> np.ndarray:
    try:
        if not container.streams.video:
            raise ImageError(f"{what}: no image stream")
        for frame in container.decode(video=0):
            rgba = frame.to_ndarray(format="rgba")
            break
        else:
            raise ImageError(f"{what}: no decodable picture")
    finally:
        container.close()
    return rgba


def load_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to uint8 [H, W, 3] RGB: PNG, JPEG and WebP through the capped decoder; another picture
    format FFmpeg reads (the operator's own file) through a probe."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"image not found: {p}")
    with open(p, "rb") as f:
        head = f.read(16)
    if sniff_format(head) is not None:
        with open(p, "rb") as f:
            return decode_image_bytes(f.read(), p, max_pixels)
    try:
        container = av.open(p, "r")
    except av.error.FFmpegError as e:
        raise ImageError(f"{p}: not a readable image ({e})") from None
    try:
        return _decode(container, p)
    except av.error.FFmpegError as e:
        raise ImageError(f"{p}: not a readable image ({e})") from None


def decode_image_bytes(data: bytes, what: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode in-memory PNG/JPEG/WebP to uint8 [H, W, 3] RGB, refusing more than `max_pixels` (ImageTooLarge)."""
    return _flatten(_rgba(decode_frame_capped(data, what, max_pixels), what))


def decode_rgba_bytes(data: bytes, what: str = "<bytes>", width: int | None = None,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode in-memory PNG/JPEG/WebP to uint8 [H, W, 4] straight-alpha RGBA (overlays keep the alpha), scaled to
    `width` (aspect kept) when given; more than `max_pixels` decoded or scaled is refused (ImageTooLarge)."""
    rgba = _rgba(decode_frame_capped(data, what, max_pixels), what)
    try:
        if width is not None and width != rgba.shape[1]:
            h = max(1, round(rgba.shape[0] * width / rgba.shape[1]))
            if width * h > max_pixels:
                raise ImageTooLarge(f"{what}: scaled to width {width} it would be {width}x{h}, more than "
                                    f"{max_pixels} pixels")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgba), format="rgba")
            interp = "AREA" if width < rgba.shape[1] else "BICUBIC"
            rgba = frame.reformat(width=width, height=h, format="rgba", interpolation=interp).to_ndarray()
        return np.ascontiguousarray(rgba)
    except av.error.FFmpegError as e:
        raise ImageError(f"{what}: not a readable image ({e})") from None


def _rgba(frame: av.VideoFrame, what: str) -> np.ndarray:
    try:
        return frame.to_ndarray(format="rgba")
    except av.error.FFmpegError as e:
        raise ImageError(f"{what}: not a readable image ({e})") from None


def _flatten(rgba: np.ndarray) -> np.ndarray:
    """RGBA composited over the letterbox colour (what transparency shows on air) as RGB."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    if np.all(alpha == 1.0):
        return np.ascontiguousarray(rgba[..., :3])
    bg = np.array(BACKGROUND, np.float32)
    rgb = rgba[..., :3].astype(np.float32) * alpha + bg * (1.0 - alpha)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def encode_png(img: np.ndarray) -> bytes:
    """Encode uint8 [H, W, 3] RGB as PNG bytes (used to build the embedded asset and in tests)."""
    img = _check_rgb(img)
    ctx = av.CodecContext.create("png", "w")
    ctx.width, ctx.height, ctx.pix_fmt = img.shape[1], img.shape[0], "rgb24"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    return b"".join(bytes(p) for p in packets)


def _check_rgb(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        got = f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}"
        raise ImageError(f"expected a uint8 [H, W, 3] RGB image, got {got}")
    if img.shape[0] < 1 or img.shape[1] < 1:
        raise ImageError(f"empty image {img.shape}")
    return img


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    if img.shape[1] == w and img.shape[0] == h:
        return img
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
    # AREA for shrinking avoids aliasing; BICUBIC for enlarging keeps edges smooth.
    interp = "AREA" if w < img.shape[1] else "BICUBIC"
    return frame.reformat(width=w, height=h, format="rgb24", interpolation=interp).to_ndarray()


def fit_box(iw: int, ih: int, width: int, height: int, mode: FitMode = "cover") -> tuple[int, int, int, int]:
    """(scaled width, scaled height, x0, y0) of fitting an iw x ih picture to width x height.

    cover: x0, y0 is where the width x height crop starts in the scaled picture; contain: where the scaled
    picture sits in the frame. One rule for the CPU (fit_image) and the GPU (engine.fit_video) paths.
    """
    if width < 1 or height < 1:
        raise ImageError(f"output geometry must be positive, got {width}x{height}")
    if mode not in ("cover", "contain"):
        raise ImageError(f"fit must be 'cover' or 'contain', got {mode!r}")
    if mode == "cover":
        scale = max(width / iw, height / ih)
        sw, sh = max(width, round(iw * scale)), max(height, round(ih * scale))
        return sw, sh, (sw - width) // 2, (sh - height) // 2
    scale = min(width / iw, height / ih)
    sw, sh = min(width, max(1, round(iw * scale))), min(height, max(1, round(ih * scale)))
    return sw, sh, (width - sw) // 2, (height - sh) // 2


def fit_image(img: np.ndarray, width: int, height: int, mode: FitMode = "cover") -> np.ndarray:
    """Fit a portrait to width x height.

    cover:   scale to fill the whole frame, then crop the overflow around the centre.
    contain: scale to fit inside the frame, letterboxed on a dark background.
    """
    img = _check_rgb(img)
    ih, iw = img.shape[:2]
    sw, sh, x0, y0 = fit_box(iw, ih, width, height, mode)
    scaled = _resize(img, sw, sh)
    if mode == "cover":
        out = scaled[y0 : y0 + height, x0 : x0 + width]
    else:
        out = np.empty((height, width, 3), np.uint8)
        out[:] = BACKGROUND
        out[y0 : y0 + sh, x0 : x0 + sw] = scaled
    return np.ascontiguousarray(out)


def default_portrait() -> np.ndarray:
    """The embedded demo portrait (flashtalk_live/assets/portrait.png) as uint8 [H, W, 3]."""
    data = resources.files("flashtalk_live").joinpath("assets/portrait.png").read_bytes()
    return decode_image_bytes(data, "flashtalk_live/assets/portrait.png")


def crossfade(frames: np.ndarray, previous: np.ndarray, n: int) -> np.ndarray:
    """Dissolve the first n frames from `previous` (one frame) into `frames`: weights (i+1)/(n+1)."""
    n = min(n, frames.shape[0])
    if n <= 0:
        return frames
    out = frames.copy()
    prev = previous.astype(np.float32)
    for i in range(n):
        a = (i + 1) / (n + 1)
        out[i] = np.clip((1 - a) * prev + a * frames[i].astype(np.float32) + 0.5, 0, 255).astype(np.uint8)
    return out
