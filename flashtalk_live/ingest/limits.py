"""Limits on the work a client can make the daemon do, each with its rejection code and setting.

* images: size (`image_too_large`, ingest.max_image_bytes) and width x height read from the headers, before any
  decoding (`image_too_many_pixels`, ingest.max_image_pixels): the largest of every size a file declares (a WebP's
  canvas, each bitstream, each animation frame; a JPEG's every frame header); only PNG, JPEG and WebP
  (`unsupported_image`). The decoder enforces the same cap on what it really decodes (images.py).
* text: prompts (`prompt_too_long`, ingest.max_prompt_chars), captions, caption cues and overlay text
  (`text_too_long`, ingest.max_text_chars), ids and names (`id_too_long`, ingest.max_id_chars).
* a clip's `meta`: nesting (`meta_too_deep`, ingest.max_meta_depth), counted without recursion, so masking and
  logging it later cannot recurse past Python's limit after the spool committed the clip.
* a clip's captions in all: characters of `text` plus every cue (`captions_too_long`, ingest.max_caption_chars);
  what they cost rendered is the compositor's to measure (compose/compositor.py: `check_captions`).
* a clip's cues: within the decoded clip (`cue_outside_clip`) and naming known layers (`unknown_layer`).
* request rate per peer: a token bucket (`rate_limited`, ingest.rate_per_s and ingest.rate_burst).
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Collection

from flashtalk_live.ingest.commands import AUDIO_COMMANDS
from flashtalk_live.ingest.protocol import ProtocolError

TEXT_ID_FIELDS = ("id", "segment_id", "name")
CUE_FIELDS = ("captions", "overlays")
CUE_SLACK_S = 1e-3  # a cue may end this much past the decoded duration (a producer's rounding of its own length)
MAX_BUCKETS = 10_000  # peers remembered by the rate limiter; idle full buckets are forgotten first


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _png(data: bytes) -> ImageInfo | None:
    # 8-byte signature, then the IHDR chunk: length, b"IHDR", width, height (big-endian).
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    w, h = struct.unpack(">II", data[16:24])
    return ImageInfo("png", w, h)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(data: bytes) -> ImageInfo | None:
    """Walk the marker segments up to the first scan; the frame header (SOFn) holds height and width."""
    i, n = 2, len(data)
    best: ImageInfo | None = None
    while i + 4 <= n:
        if data[i] != 0xFF:
            return best
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: the frame header came before
            return best
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if length < 2:
            return best
        if marker in _SOF and i + 9 <= n:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            # height 0 means "defined later by a DNL marker": unknown size, so treat it as unbounded
            info = ImageInfo("jpeg", w, h if h else 1 << 16)
            if best is None or info.pixels > best.pixels:
                best = info
        i += 2 + length
    return best


MAX_WEBP_CHUNKS = 4096  # chunks walked in a WebP file; past that the file is refused (unsupported_image)


def _webp_bitstream(tag: bytes, body: bytes) -> tuple[int, int] | None:
    """The picture size a VP8 (lossy) or VP8L (lossless) bitstream itself declares: what its decoder allocates."""
    if tag == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", body[6:10])
        return w & 0x3FFF, h & 0x3FFF
    if tag == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
        (bits,) = struct.unpack("<I", body[1:5])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _webp_chunks(data: bytes, start: int, end: int) -> list[tuple[bytes, bytes]] | None:
    """(tag, body) of the RIFF chunks in data[start:end]; None when there are more than MAX_WEBP_CHUNKS."""
    out: list[tuple[bytes, bytes]] = []
    i = start
    while i + 8 <= end:
        if len(out) >= MAX_WEBP_CHUNKS:
            return None
        size = int.from_bytes(data[i + 4:i + 8], "little")
        out.append((data[i:i + 4], data[i + 8:min(i + 8 + size, end)]))
        i += 8 + size + (size & 1)
    return out


def _webp(data: bytes) -> ImageInfo | None:
    """The largest picture a WebP file may decode to: its VP8X canvas, every bitstream's own size (a canvas of 1x1
    may wrap a 16000x16000 bitstream) and every animation frame's; all must be readable."""
    if len(data) < 20 or data[8:12] != b"WEBP":
        return None
    chunks = _webp_chunks(data, 12, len(data))
    if not chunks:
        return None
    sizes: list[tuple[int, int]] = []
    for tag, body in chunks:
        if tag == b"VP8X":
            if len(body) < 10:
                return None
            sizes.append((int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1))
        elif tag == b"ANMF":  # an animation frame: its own size, then its own chunks (ALPH, VP8/VP8L)
            if len(body) < 16:
                return None
            sizes.append((int.from_bytes(body[6:9], "little") + 1, int.from_bytes(body[9:12], "little") + 1))
            inner = _webp_chunks(body, 16, len(body))
            if inner is None:
                return None
            sizes += [wh for t, b in inner if (wh := _webp_bitstream(t, b)) is not None]
        else:
            wh = _webp_bitstream(tag, body)
            if wh is not None:
                sizes.append(wh)
            elif tag in (b"VP8 ", b"VP8L"):
                return None  # a bitstream whose size cannot be read
    if not sizes:
        return None
    w, h = max(sizes, key=lambda wh: wh[0] * wh[1])
    return ImageInfo("webp", w, h)


def image_info(data: bytes) -> ImageInfo:
    """Format and size from the first bytes only; `unsupported_image` for anything but PNG, JPEG and WebP."""
    info = None
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        info = _png(data)
    elif data[:3] == b"\xff\xd8\xff":
        info = _jpeg(data)
    elif data[:4] == b"RIFF":
        info = _webp(data)
    if info is None:
        raise ProtocolError("unsupported_image", "the image must be PNG, JPEG or WebP with a readable header")
    if info.width < 1 or info.height < 1:
        raise ProtocolError("unsupported_image", f"the {info.format} header declares {info.width}x{info.height}")
    return info


def check_image(data: bytes, ingest: Any) -> ImageInfo:
    """Refuse an image over ingest.max_image_bytes or ingest.max_image_pixels without decoding it."""
    if len(data) > ingest.max_image_bytes:
        raise ProtocolError("image_too_large",
                            f"image of {len(data)} bytes exceeds ingest.max_image_bytes {ingest.max_image_bytes}")
    info = image_info(data)
    if info.pixels > ingest.max_image_pixels:
        raise ProtocolError("image_too_many_pixels",
                            f"{info.format} of {info.width}x{info.height} = {info.pixels} pixels exceeds "
                            f"ingest.max_image_pixels {ingest.max_image_pixels}")
    return info


def check_text(header: dict[str, Any], ingest: Any) -> None:
    """Prompt and id/name lengths (the header's own 64 KiB cap is the protocol's)."""
    prompt = header.get("prompt")
    if isinstance(prompt, str) and len(prompt) > ingest.max_prompt_chars:
        raise ProtocolError("prompt_too_long", f"prompt of {len(prompt)} characters exceeds ingest.max_prompt_chars "
                            f"{ingest.max_prompt_chars}", "prompt")
    texts = [("text", header.get("text"))]
    cues = header.get("captions")
    if isinstance(cues, list):
        texts += [(f"captions.{i}.text", c.get("text")) for i, c in enumerate(cues) if isinstance(c, dict)]
    for where, text in texts:
        if isinstance(text, str) and len(text) > ingest.max_text_chars:
            raise ProtocolError("text_too_long", f"{where} of {len(text)} characters exceeds ingest.max_text_chars "
                                f"{ingest.max_text_chars}", where)
    # a clip's `text` is a caption; overlay_set's `text` is a layer's (the compositor measures that one)
    total = sum(len(t) for where, t in texts
                if isinstance(t, str) and (where != "text" or header.get("cmd") in AUDIO_COMMANDS))
    if total > ingest.max_caption_chars:
        raise ProtocolError("captions_too_long", f"{total} caption characters (text and cues) exceed "
                            f"ingest.max_caption_chars {ingest.max_caption_chars}", "captions")
    depth = json_depth(header.get("meta"))
    if depth > ingest.max_meta_depth:
        raise ProtocolError("meta_too_deep", f"meta is nested {depth} levels deep, ingest.max_meta_depth is "
                            f"{ingest.max_meta_depth}", "meta")
    for f in TEXT_ID_FIELDS:
        v = header.get(f)
        if isinstance(v, str) and len(v) > ingest.max_id_chars:
            raise ProtocolError("id_too_long",
                                f"{f!r} of {len(v)} characters exceeds ingest.max_id_chars {ingest.max_id_chars}", f)


def json_depth(value: Any) -> int:
    """Nesting of JSON-like data (a scalar is 0, `{}` and `[]` are 1), walked with a stack: no recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        elif not isinstance(v, (list, tuple)):
            continue
        deepest = max(deepest, d)
        stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list, tuple)))
    return deepest


def check_cues(args: Any, duration_s: float, layers: Callable[[], Collection[str]] | None = None) -> None:
    """A clip's `captions` and `overlays` cues lie within its decoded duration (`cue_outside_clip`) and name defined
    layers (`unknown_layer`; only when `layers` is given: a bare ingest server has no compositor to ask)."""
    for name in CUE_FIELDS:
        for i, cue in enumerate(getattr(args, name, None) or ()):
            if cue.start < 0 or cue.end <= cue.start or cue.end > duration_s + CUE_SLACK_S:
                raise ProtocolError("cue_outside_clip", f"{name}.{i}: {cue.start:g} to {cue.end:g} s is not within "
                                    f"the clip (0 to {duration_s:.3f} s, end after start)", f"{name}.{i}")
    cues = getattr(args, "overlays", None) or ()
    if cues and layers is not None:
        known = set(layers())
        for i, cue in enumerate(cues):
            if cue.name not in known:
                raise ProtocolError("unknown_layer", f"overlays.{i}: no overlay layer named {cue.name!r}; layers: "
                                    f"{', '.join(sorted(known)) or 'none'}", f"overlays.{i}.name")


class RateLimiter:
    """One token bucket per peer name: `rate_per_s` tokens a second, at most `burst` saved. rate 0: no limit."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate, self.burst = float(rate_per_s), float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, peer: str, now: float | None = None) -> None:
        """Take one token for `peer` or raise `rate_limited`."""
        if self.rate <= 0:
            return
        t = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(peer, (self.burst, t))
            tokens = min(self.burst, tokens + (t - at) * self.rate)
            if tokens < 1.0:
                self._buckets[peer] = (tokens, t)
                raise ProtocolError("rate_limited", f"over ingest.rate_per_s {self.rate:g} requests/s "
                                    f"(burst {self.burst:g}); retry in {(1.0 - tokens) / self.rate:.2f} s")
            self._buckets[peer] = (tokens - 1.0, t)
            if len(self._buckets) > MAX_BUCKETS:
                self._forget(t)

    def _forget(self, now: float) -> None:
        full = [p for p, (tok, at) in self._buckets.items() if tok + (now - at) * self.rate >= self.burst]
        for p in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[p]
