"""Text to RGBA patches with Pillow and a CJK-capable font: finding the font, wrapping lines, outline or box.

Pillow's FreeType binding is the rasteriser (PyAV has no text drawing); the default font is Noto Sans CJK from
Debian's fonts-noto-cjk (SIL OFL 1.1), found by a short search of `overlays.font_dirs` when `overlays.font` is not
set. With no font found, text draws with BUNDLED_FONT, the package's own subset of Noto Sans CJK SC: every glyph of
the usual AI labels and printable ASCII, nothing more.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# (path, face index) under SYSTEM_FONT_DIR: the Simplified Chinese face of each collection first; DejaVu last (no CJK:
# warned about). overlays.font_dirs moves the search to other folders (the same names below each).
SYSTEM_FONT_DIR = "/usr/share/fonts"
FONT_CANDIDATES: tuple[tuple[str, int], ...] = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),  # index 2: Noto Sans CJK SC
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc", 2),
    ("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc", 0),
    ("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf", 0),
)
FALLBACK_FONTS = ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",)
CJK_PROBE = "生成"
# Shipped with the package (assets/make_label_font.py cuts it from Noto Sans CJK SC, SIL OFL 1.1): printable ASCII
# and the characters of the usual AI labels, so the label airs on a box with no font at all.
BUNDLED_FONT: tuple[str, int] = (
    str(Path(__file__).resolve().parent.parent / "assets" / "fonts" / "NotoSansCJKsc-label.otf"), 0)


class FontError(ValueError):
    """No usable font file."""


def find_font(configured: str | None = None, dirs: Sequence[str] = (SYSTEM_FONT_DIR,)) -> tuple[str, int] | None:
    """The configured font file (index 0, or `path#N` for face N of a collection), else the first CJK font found in
    `dirs`, else the first fallback font; None when there is none (the caller falls back to BUNDLED_FONT)."""
    if configured:
        path, _, idx = configured.partition("#")
        if not os.path.isfile(path):
            raise FontError(f"overlays.font {path!r}: no such file")
        return path, int(idx or 0)
    for candidates in (FONT_CANDIDATES, tuple((p, 0) for p in FALLBACK_FONTS)):
        for folder in dirs:
            for name, face in candidates:
                found = os.path.join(folder, os.path.relpath(name, SYSTEM_FONT_DIR))
                if os.path.isfile(found):
                    return found, face
    return None


@lru_cache(maxsize=64)
def load_font(path: str, index: int, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, index=index)


def covers(font: ImageFont.FreeTypeFont, text: str) -> bool:
    """Whether every character of `text` has a glyph of its own (not the .notdef box): a missing glyph draws the
    same bitmap as a private-use character no font defines."""
    notdef = _glyph(font, "\ue000")
    return all(_glyph(font, ch) != notdef for ch in set(text) if not ch.isspace())


def _glyph(font: ImageFont.FreeTypeFont, ch: str) -> bytes:
    img = Image.new("L", (int(font.size * 2), int(font.size * 2)), 0)
    ImageDraw.Draw(img).text((0, 0), ch, font=font, fill=255)
    return img.tobytes()


@dataclass(frozen=True)
class TextStyle:
    size: int = 28
    colour: tuple[int, int, int] = (255, 255, 255)
    outline: int = 2  # px of dark outline around each glyph; 0: none
    outline_colour: tuple[int, int, int] = (0, 0, 0)
    box: tuple[int, int, int, int] | None = None  # RGBA box behind the text
    padding: int = 6  # inside the box
    line_spacing: float = 1.2


def wrap(font: ImageFont.FreeTypeFont, text: str, max_width: int) -> list[str]:
    """Greedy lines that fit `max_width` px: CJK breaks between any characters, other scripts at spaces when they
    can (a word longer than a line is broken inside)."""
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        cur = ""
        for ch in para:
            if font.getlength(cur + ch) <= max_width or not cur:
                cur += ch
                continue
            cut = cur.rfind(" ")
            if ch != " " and cut > 0 and not _cjk(ch):
                lines.append(cur[:cut])
                cur = cur[cut + 1:] + ch
            else:
                lines.append(cur.rstrip())
                cur = ch.lstrip()
        lines.append(cur)
    return [ln for ln in lines if ln.strip()]


def _cjk(ch: str) -> bool:
    return ord(ch) >= 0x2E80


def text_size(text: str, font: ImageFont.FreeTypeFont, style: TextStyle) -> tuple[int, int]:
    """(width, height) in px that render_text(text) will have, measured without drawing anything."""
    lines = text.split("\n")
    stroke = style.outline
    asc, desc = font.getmetrics()
    line_h = round((asc + desc) * style.line_spacing)
    pad = style.padding if style.box is not None else 0
    w = int(np.ceil(max(font.getlength(ln) for ln in lines))) + 2 * (stroke + pad)
    h = line_h * (len(lines) - 1) + asc + desc + 2 * (stroke + pad)
    return max(w, 1), max(h, 1)


def render_text(text: str, font: ImageFont.FreeTypeFont, style: TextStyle,
                crop: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """`text` (may hold newlines) as uint8 [H, W, 4] straight-alpha RGBA: glyphs with an outline, over a box.

    `crop` = (x, y, w, h) within the whole text's box (text_size) draws only that part: nothing outside it is ever
    allocated, so text larger than the frame costs only what shows."""
    lines = text.split("\n")
    stroke = style.outline
    asc, desc = font.getmetrics()
    line_h = round((asc + desc) * style.line_spacing)
    widths = [font.getlength(ln) for ln in lines]
    pad = style.padding if style.box is not None else 0
    w, h = text_size(text, font, style)
    cx, cy, cw, ch = crop if crop is not None else (0, 0, w, h)
    size = (max(cw, 1), max(ch, 1))
    fill_mask, any_mask = Image.new("L", size, 0), Image.new("L", size, 0)
    fill_draw, any_draw = ImageDraw.Draw(fill_mask), ImageDraw.Draw(any_mask)
    for i, ln in enumerate(lines):
        top = pad + stroke + i * line_h
        if top + line_h + stroke < cy or top - stroke > cy + ch:
            continue  # a line wholly outside the crop: not drawn at all
        xy = ((w - widths[i]) / 2 - cx, top - cy)
        fill_draw.text(xy, ln, font=font, fill=255)
        any_draw.text(xy, ln, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
    # Straight alpha: the outline colour shading into the fill colour, coverage the stroked glyph's.
    f = np.asarray(fill_mask, np.float32)[..., None] / 255.0
    a = np.maximum(np.asarray(any_mask, np.float32), np.asarray(fill_mask, np.float32))[..., None] / 255.0
    rgb = np.asarray(style.outline_colour, np.float32) * (1 - f) + np.asarray(style.colour, np.float32) * f
    if style.box is not None:  # glyphs over the box: Porter-Duff "over" in straight alpha
        box_rgb = np.asarray(style.box[:3], np.float32)
        box_a = style.box[3] / 255.0
        out_a = a + box_a * (1 - a)
        rgb = (rgb * a + box_rgb * box_a * (1 - a)) / np.maximum(out_a, 1e-6)
        a = out_a
    out = np.concatenate([rgb, a * 255.0], axis=2)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
