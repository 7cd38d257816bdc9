"""A box with no system font (a GPU server, a container) starts and airs the AI label with its CJK glyphs, drawn
with the package's own label font; captions without a font are a warning, not a dead room.

The system fonts are hidden by pointing overlays.font_dirs (where compose/text.py looks) at an empty folder. The
label is read back from the recording: its glyph pixels must match a reference render with the bundled font, and
match it clearly better than another Chinese label of the same size in the same place (AI合成).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from flashtalk_live.compose.compositor import AI_LABEL, Compositor
from flashtalk_live.compose.text import BUNDLED_FONT
from flashtalk_live.config import load_settings

from support.audio import wav_bytes
from support.daemon_harness import DaemonProcess, wait_for

SIZE = 256


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _label_reference(font_dirs: list[str], text: str | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The AI label (or `text` in its place and style) drawn over black at SIZE x SIZE (luma) and its box
    (y0, y1, x0, x1)."""
    s = load_settings(None, [f"overlays.font_dirs={font_dirs!r}".replace("'", '"')], environ={})
    overlays = s.overlays
    if text is not None:
        overlays = overlays.model_copy(update={"ai_label": overlays.ai_label.model_copy(update={"text": text})})
    comp = Compositor(overlays, SIZE, SIZE, 25)
    patch = comp._layers[AI_LABEL].patch
    assert patch is not None
    h, w = patch.shape
    black = np.zeros((SIZE, SIZE, 3), np.uint8)
    return _luma(comp.compose(black, 0)), (patch.y, patch.y + h, patch.x, patch.x + w)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.timeout(180)
def test_the_label_airs_with_its_cjk_glyphs_when_the_box_has_no_font(tmp_path: Path):
    empty = tmp_path / "no-fonts"
    empty.mkdir()
    rec = tmp_path / "rec.flv"
    d = DaemonProcess(tmp_path / "state", [{"name": "rec", "url": str(rec)}],
                      [f'overlays.font_dirs=["{empty}"]'])
    try:
        d.start()
        with d.client() as c, d.events() as ev:
            st = c.status()
            assert st["overlays"]["label_font"] == BUNDLED_FONT[0] and st["overlays"]["font"] == BUNDLED_FONT[0]
            ev.sync(c)
            # a captioned clip with no caption font: the room stays on air and the clip plays out
            sid = c.enqueue(wav_bytes(1.0, rate=48000), format="wav", text="hello 你好")["segment_id"]
            wait_for(ev, lambda e: e["type"] == "finished" and e.get("segment_id") == sid, 60)
        assert d.stop() == 0, d.log_tail()
    finally:
        d.kill()
    warned = [e for e in d.log_lines() if e.get("event") == "overlay_font_missing"]
    assert warned and warned[0]["level"] == "warning", d.log_tail()
    assert not [e for e in d.log_lines() if e.get("event") == "ai_label_glyphs_missing"]

    with av.open(str(rec)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) >= 25
    aired = _luma(frames[-1])
    want, (y0, y1, x0, x1) = _label_reference([str(empty)])
    assert aired.shape == want.shape
    region = aired[y0:y1, x0:x1]
    glyphs = want[y0:y1, x0:x1] > 128
    assert glyphs.sum() > 100, "the reference label has glyph pixels"
    # glyph pixels are white over the label's dark box: bright where the reference has ink, dark elsewhere
    assert region[glyphs].mean() > 150 and region[~glyphs].mean() < 110, (region[glyphs].mean(), region[~glyphs].mean())
    cjk = slice((x1 - x0) * 2 // 5, None)  # "AI生成": the CJK half of the label
    match = _corr(region[:, cjk], want[y0:y1, x0:x1][:, cjk])
    assert match > 0.8, match
    # the control: another CJK label of the same width in the same place ("AI合成") matches clearly worse
    other, other_box = _label_reference([str(empty)], "AI合成")
    assert other_box == (y0, y1, x0, x1)
    assert _corr(region[:, cjk], other[y0:y1, x0:x1][:, cjk]) < match - 0.15
