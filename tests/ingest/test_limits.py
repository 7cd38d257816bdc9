"""Image headers read without decoding (real PNG/JPEG/WebP from PyAV's encoders), the pixel-bomb refusal, the rate
limiter's buckets and the folder confinement of server paths."""

from __future__ import annotations

import io
import os
from types import SimpleNamespace

import av
import numpy as np
import pytest

from flashtalk_live.ingest.auth import confine_output_file, confine_path
from flashtalk_live.ingest.limits import RateLimiter, check_image, image_info
from flashtalk_live.ingest.protocol import ProtocolError
from flashtalk_live.images import encode_png

from support.images import png_bomb


def encode_with(codec: str, w: int, h: int, pix_fmt: str) -> bytes:
    """One picture through PyAV's image muxer, as a client's file would be."""
    buf = io.BytesIO()
    fmt = {"mjpeg": "mjpeg", "libwebp": "webp"}[codec]
    with av.open(buf, "w", format=fmt) as out:
        st = out.add_stream(codec, rate=1)
        st.width, st.height, st.pix_fmt = w, h, pix_fmt
        frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), 90, np.uint8), format="rgb24")
        for p in st.encode(frame.reformat(format=pix_fmt)):
            out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return buf.getvalue()


LIMITS = SimpleNamespace(max_image_bytes=1 << 20, max_image_pixels=4_000_000)


def test_header_sizes_match_the_encoded_pictures():
    png = encode_png(np.zeros((37, 53, 3), np.uint8))
    info = image_info(png)
    assert (info.format, info.width, info.height, info.pixels) == ("png", 53, 37, 53 * 37)
    jpg = encode_with("mjpeg", 64, 48, "yuvj420p")
    assert (image_info(jpg).format, image_info(jpg).width, image_info(jpg).height) == ("jpeg", 64, 48)
    webp = encode_with("libwebp", 30, 20, "yuv420p")
    assert (image_info(webp).format, image_info(webp).width, image_info(webp).height) == ("webp", 30, 20)
    bomb = png_bomb(16000, 16000)
    assert len(bomb) < 200_000 and image_info(bomb).pixels == 256_000_000


def test_every_image_limit_has_its_code():
    with pytest.raises(ProtocolError) as ei:
        check_image(png_bomb(16000, 16000), LIMITS)
    assert ei.value.code == "image_too_many_pixels" and "ingest.max_image_pixels" in ei.value.reason
    with pytest.raises(ProtocolError) as ei:
        check_image(b"\x89PNG\r\n\x1a\n" + os.urandom(2 << 20), LIMITS)
    assert ei.value.code == "image_too_large" and "ingest.max_image_bytes" in ei.value.reason
    for junk in (b"GIF89a" + b"\0" * 40, b"BM" + b"\0" * 60, b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xd9", b""):
        with pytest.raises(ProtocolError) as ei:
            check_image(junk, LIMITS)
        assert ei.value.code == "unsupported_image", junk
    assert check_image(encode_png(np.zeros((8, 8, 3), np.uint8)), LIMITS).pixels == 64


def test_rate_limiter_refills_per_peer():
    rl = RateLimiter(rate_per_s=2.0, burst=2)
    rl.check("a", now=0.0)
    rl.check("a", now=0.0)
    with pytest.raises(ProtocolError) as ei:
        rl.check("a", now=0.1)
    assert ei.value.code == "rate_limited"
    rl.check("b", now=0.1)  # its own bucket
    rl.check("a", now=0.6)  # 0.5 s refilled one token
    RateLimiter(0, 1).check("a")  # 0: no limit


def test_paths_are_confined_and_missing_reads_like_forbidden(tmp_path):
    allowed, outside = tmp_path / "avatars", tmp_path / "secret"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "me.png").write_bytes(b"x")
    (outside / "key.png").write_bytes(b"x")
    (allowed / "link.png").symlink_to(outside / "key.png")
    dirs = [str(allowed)]
    assert confine_path("me.png", dirs, "ingest.avatar_dirs") == allowed / "me.png"
    assert confine_path(str(allowed / "me.png"), dirs, "ingest.avatar_dirs") == allowed / "me.png"
    reasons = set()
    for bad in ("link.png", str(outside / "key.png"), "../secret/key.png", str(allowed / "nope.png"), "nope.png",
                str(allowed / ".." / "secret" / "key.png"), "", "/etc/passwd"):
        with pytest.raises(ProtocolError) as ei:
            confine_path(bad, dirs, "ingest.avatar_dirs")
        assert ei.value.code == "forbidden_path"
        reasons.add(ei.value.reason)
    assert len(reasons) == 1  # missing and forbidden cannot be told apart
    with pytest.raises(ProtocolError):
        confine_path("me.png", [], "ingest.avatar_dirs")  # no folders: nothing is allowed

    confine_output_file(str(allowed / "rec" / "live-%Y.flv"), dirs)
    for bad in (str(outside / "x.flv"), str(allowed / ".." / "secret" / "x.flv"), "rel.flv", str(allowed / "link.png")):
        with pytest.raises(ProtocolError) as ei:
            confine_output_file(bad, dirs)
        assert ei.value.code == "forbidden_path", bad
