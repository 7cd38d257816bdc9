"""Images bounded by what they decode to (issue 24, item 2): crafted PNG, JPEG and WebP whose headers disagree with
their pictures (a 1x1 VP8X canvas over a 16000x16000 bitstream, animation frames larger than the canvas, thousands
of frames, several JPEG frame headers) never decode past the pixel limit, through the header check and the capped
decoder that every image path uses (set_avatar, overlay_set and the console's upload through them, config layers)."""

from __future__ import annotations

import random
import resource
import time

import numpy as np
import pytest

from flashtalk_live.errors import Rejection
from flashtalk_live.ingest.limits import check_image
from flashtalk_live.images import ImageError, ImageTooLarge, decode_image_bytes, decode_rgba_bytes, \
    encode_png

from support.images import anmf, jpeg_sof, png_bomb, vp8, vp8l, vp8x, webp

CAP = 1_000_000
LIMITS = type("Limits", (), {"max_image_bytes": 1 << 20, "max_image_pixels": CAP})()


def crafted(rng: random.Random) -> list[tuple[str, bytes]]:
    """Files whose declared sizes disagree, each with the largest size any part of it declares."""
    big = rng.randint(1100, 16383)
    small = rng.randint(1, 900)
    return [
        ("canvas 1x1 over a huge lossless bitstream", webp(vp8x(1, 1), vp8l(big, big))),
        ("canvas 1x1 over a huge lossy bitstream", webp(vp8x(1, 1), vp8(big, big))),
        ("huge canvas, small bitstream", webp(vp8x(big, big), vp8l(small, small))),
        ("bare huge lossless", webp(vp8l(big, rng.randint(1, 16383)))),
        ("animated: small canvas, one huge frame", webp(vp8x(small, small, 0x02), riff_anim(),
                                                       anmf(small, small, vp8l(small, small)),
                                                       anmf(small, small, vp8l(big, big)))),
        ("animated: a frame larger than its canvas", webp(vp8x(small, small, 0x02), riff_anim(),
                                                         anmf(big, big, vp8l(small, small)))),
        ("animated: 3000 small frames", webp(vp8x(small, small, 0x02), riff_anim(),
                                             *[anmf(small, small, vp8l(small, small))] * 3000)),
        ("jpeg: a small frame header, then a huge one", jpeg_sof(small, small)[:-2] + jpeg_sof(big, big)[2:]),
        ("jpeg: progressive huge", jpeg_sof(big, big, 0xC2)),
        ("jpeg: height 0 (defined later by DNL)", jpeg_sof(small, 0)),
        ("png: huge IHDR", png_bomb(big, 1000)),
    ]


def riff_anim() -> bytes:
    from support.images import riff_chunk

    return riff_chunk(b"ANIM", b"\0" * 6)


def outcome(data: bytes) -> str:
    """What the daemon does with these bytes: refused by the header, refused by the decoder, undecodable, or the
    picture's size once decoded (which must be within the cap)."""
    try:
        check_image(data, LIMITS)
    except Rejection as e:
        return e.code
    for decode in (decode_image_bytes, lambda d, w, cap: decode_rgba_bytes(d, w, None, cap)):
        try:
            img = decode(data, "fuzz", CAP)
        except ImageTooLarge:
            return "decoder_refused"
        except ImageError:
            return "undecodable_image"
        assert img.shape[0] * img.shape[1] <= CAP, f"decoded {img.shape} past the cap"
    return "decoded"


@pytest.mark.timeout(300)
def test_no_crafted_header_decodes_past_the_pixel_limit():
    rng = random.Random(24)
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    slowest = 0.0
    seen: dict[str, set[str]] = {}
    for _ in range(40):
        for name, data in crafted(rng):
            t = time.perf_counter()
            got = outcome(data)
            slowest = max(slowest, time.perf_counter() - t)
            seen.setdefault(name, set()).add(got)
            assert got != "decoded" or "huge" not in name, (name, got)
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak0) / 1024
    print(f"peak RSS grew {grew_mb:.1f} MB over {40 * len(seen)} crafted files; slowest {slowest * 1000:.1f} ms")
    # one 16000x16000 RGBA decode is 1 GB: a single decode past the cap would show here
    assert grew_mb < 100
    assert seen["canvas 1x1 over a huge lossless bitstream"] == {"image_too_many_pixels"}  # the header walk sees it
    assert seen["animated: 3000 small frames"] <= {"undecodable_image", "decoded"}


@pytest.mark.timeout(120)
def test_the_decoder_refuses_what_a_header_check_would_miss():
    """Without the header check (a config layer, a path a trusted peer names), the decoder's own cap holds."""
    bomb = webp(vp8x(1, 1), vp8l(16000, 16000))
    assert len(bomb) < 64
    t = time.perf_counter()
    with pytest.raises(ImageTooLarge):
        decode_image_bytes(bomb, "bomb", 25_000_000)
    with pytest.raises(ImageTooLarge):
        decode_rgba_bytes(png_bomb(6000, 6000), "bomb", None, 25_000_000)
    print(f"refused in {(time.perf_counter() - t) * 1000:.1f} ms")
    # a real picture decodes, and a width that would scale it past the cap is refused too
    png = encode_png(np.full((40, 30, 3), 7, np.uint8))
    assert decode_image_bytes(png, "ok", 1200).shape == (40, 30, 3)  # exactly at the cap
    with pytest.raises(ImageTooLarge):
        decode_rgba_bytes(png, "wide", 8000, 1_000_000)
