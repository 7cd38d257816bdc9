"""Test images: a PNG that declares a huge size but is tiny on the wire (a decompression bomb)."""

from __future__ import annotations

import struct
import zlib


def png_bomb(w: int, h: int) -> bytes:
    """A valid 1-bit greyscale PNG declaring w x h: tens of KB on the wire, w*h*4 bytes once decoded to RGBA."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = b"\0" * (1 + (w + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# -- WebP and JPEG whose headers disagree with their pictures --------------------------------------------------

def riff_chunk(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def webp(*chunks: bytes) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def vp8x(w: int, h: int, flags: int = 0) -> bytes:
    """The extended header: a canvas of w x h (flags 0x02 animation, 0x10 alpha)."""
    return riff_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little"))


def vp8l(w: int, h: int, tail: bytes = b"\0" * 8) -> bytes:
    """A lossless bitstream header declaring w x h (what libavcodec's decoder allocates), then `tail`."""
    return riff_chunk(b"VP8L", b"\x2f" + struct.pack("<I", (w - 1) | ((h - 1) << 14)) + tail)


def vp8(w: int, h: int, tail: bytes = b"\0" * 16) -> bytes:
    """A lossy key frame header declaring w x h."""
    return riff_chunk(b"VP8 ", b"\x10\x02\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", w, h) + tail)


def anmf(w: int, h: int, *inner: bytes) -> bytes:
    """An animation frame of w x h holding its own bitstream chunks."""
    head = (0).to_bytes(3, "little") * 2 + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little") \
        + (100).to_bytes(3, "little") + b"\0"
    return riff_chunk(b"ANMF", head + b"".join(inner))


def jpeg_sof(w: int, h: int, marker: int = 0xC0) -> bytes:
    """A JPEG start and one frame header (SOFn) declaring w x h, 3 components, then an end of image."""
    sof = struct.pack(">BHHB", 8, h, w, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + b"\xff" + bytes([marker]) + struct.pack(">H", len(sof) + 2) + sof + b"\xff\xd9"
