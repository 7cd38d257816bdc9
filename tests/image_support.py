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
