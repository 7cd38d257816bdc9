"""The package's label font (assets/fonts, cut by assets/make_label_font.py from Noto Sans CJK SC): small, draws
every glyph of the usual AI labels and printable ASCII, and is what the script makes from fonts-noto-cjk today."""

from __future__ import annotations

import importlib.util
import os
import string
from pathlib import Path

import pytest

from flashtalk_live.compose.text import BUNDLED_FONT, covers, find_font, load_font
from flashtalk_live.config import load_settings

ASSETS = Path(BUNDLED_FONT[0]).parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("make_label_font", ASSETS / "make_label_font.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_bundled_font_draws_the_labels_and_ascii():
    path = Path(BUNDLED_FONT[0])
    assert path.stat().st_size < 64 * 1024
    assert (path.parent / "OFL.txt").read_text().count("SIL OPEN FONT LICENSE Version 1.1") >= 1
    font = load_font(*BUNDLED_FONT, 24)
    default_label = load_settings(None, environ={}).overlays.ai_label.text
    for text in (default_label, "内容由AI生成", "AI合成", "数字人", "虚拟主播", string.ascii_letters + string.digits):
        assert covers(font, text), text
    assert not covers(font, "你好"), "a subset: other Chinese text needs a system font"


def test_no_font_in_the_search_path_is_none_not_an_error(tmp_path):
    assert find_font(None, [str(tmp_path)]) is None
    (tmp_path / "truetype" / "dejavu").mkdir(parents=True)
    fake = tmp_path / "truetype" / "dejavu" / "DejaVuSans.ttf"
    fake.write_bytes(b"")
    assert find_font(None, [str(tmp_path)]) == (str(fake), 0)  # found by the same names under another folder


def test_the_script_makes_the_committed_subset(tmp_path):
    pytest.importorskip("fontTools")
    script = _script()
    if not os.path.isfile(script.SOURCE):
        pytest.skip(f"{script.SOURCE} not installed (fonts-noto-cjk)")
    from fontTools.ttLib import TTFont

    made = script.make(out=tmp_path / "label.otf")
    committed, fresh = TTFont(BUNDLED_FONT[0]), TTFont(str(made))
    assert committed.getBestCmap() == fresh.getBestCmap()
    assert committed.getGlyphOrder() == fresh.getGlyphOrder()
    assert set(script.CHARACTERS) <= {chr(c) for c in committed.getBestCmap()}
