"""Regenerate assets/fonts/NotoSansCJKsc-label.otf: the glyphs the on-air AI label needs, cut from Noto Sans CJK SC.

The label must air on any box, including a GPU server or container with no font installed, so the package ships
the few glyphs it draws (SIL OFL 1.1, assets/fonts/OFL.txt): printable ASCII and the Chinese characters of the
usual AI-content labels ("AI生成", "内容由AI生成", "AI合成", "数字人", "虚拟主播", "人工智能"). Other text (captions,
text layers) uses a system font; overlays.font_dirs says where to look.

Needs fontTools and Debian's fonts-noto-cjk (the release the subset was cut from is in the font's version string):

    pip install fonttools && python flashtalk_live/assets/make_label_font.py
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

SOURCE = "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc"
SOURCE_INDEX = 2  # Noto Sans CJK SC
OUT = Path(__file__).resolve().parent / "fonts" / "NotoSansCJKsc-label.otf"
# What the label may say: the default text and the usual alternatives platforms accept, with their punctuation.
LABEL_TEXT = "AI生成 内容由AI生成 AI合成 数字人 虚拟主播 人工智能 本直播 使用 技术 ：（）·，。、！？「」【】"
CHARACTERS = "".join(sorted(set(string.printable.strip() + " " + LABEL_TEXT)))


def make(source: str = SOURCE, index: int = SOURCE_INDEX, out: Path = OUT) -> Path:
    # fontTools only here (a build-time tool): the daemon reads the result with Pillow
    from fontTools import subset
    from fontTools.ttLib import TTFont

    options = subset.Options()
    options.name_IDs = ["*"]  # keep the copyright and licence records (OFL 1.1 asks for them)
    options.name_languages = ["*"]
    options.hinting = False  # drawn at label sizes by FreeType, which does not need the CFF hints
    # the default layout features (kerning, ligatures...): "*" would pull in every vertical and regional variant
    font = TTFont(source, fontNumber=index, lazy=False, recalcTimestamp=False)  # the same bytes on every run
    subsetter = subset.Subsetter(options)
    subsetter.populate(text=CHARACTERS)
    subsetter.subset(font)
    out.parent.mkdir(parents=True, exist_ok=True)
    font.flavor = None
    font.save(str(out))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=SOURCE)
    p.add_argument("--index", type=int, default=SOURCE_INDEX)
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    out = make(a.source, a.index, a.out)
    print(f"{out}: {out.stat().st_size} bytes, {len(CHARACTERS)} characters")


if __name__ == "__main__":
    main()
