"""A clip's cues on air, read back from the recording of a real daemon: an `overlays` cue shows the card from 1 s to
2 s after the clip's first aired frame, and `captions` cues are shown at the producer's times, not by characters."""

from __future__ import annotations

import time

import numpy as np
import pytest

from flashtalk_live.client import Client
from flashtalk_live.images import encode_png

from support.overlays import BG, CARD, H, W, decode, differs, flat_daemon, needs_cjk_font, quiet_tone

pytestmark = needs_cjk_font


@pytest.mark.timeout(180)
def test_overlay_and_caption_cues_on_air_from_the_recording(tmp_path):
    d, s, marks, card = flat_daemon(tmp_path, "overlays.ai_label_enabled=false")
    d.start()
    try:
        with Client(f"ipc://{tmp_path / 'state'}/control.sock") as c:
            assert c.call("overlay_set", encode_png(card), name="card", anchor="center", fade_s=0.0)["ok"]
            time.sleep(1.0)  # queued a while before it airs: cue times count from its first aired frame
            sid = c.enqueue(quiet_tone(3.0), format="wav", text="整段文字",
                            overlays=[{"name": "card", "start": 1.0, "end": 2.0}],
                            captions=[{"text": "第一句", "start": 0.2, "end": 0.8},
                                      {"text": "第二句", "start": 1.6, "end": 2.4}])["segment_id"]
            t_end = time.monotonic() + 20
            while f"finished:{sid}" not in marks and time.monotonic() < t_end:
                time.sleep(0.1)
            time.sleep(1.0)
    finally:
        d.close()
    frames = decode(tmp_path / "rec.flv")
    assert f"started:{sid}" in marks and f"finished:{sid}" in marks
    start, fps = marks[f"started:{sid}"], s.video.fps

    def spans(on: np.ndarray) -> list[tuple[int, int]]:
        """[first, last] frame of each run of True, relative to the clip's started frame."""
        idx = np.nonzero(on)[0]
        cuts = np.nonzero(np.diff(idx) > 1)[0]
        return [(int(a) - start, int(b) - start) for a, b in zip(idx[np.r_[0, cuts + 1]], idx[np.r_[cuts, -1]])]

    def near(got: list[tuple[int, int]], want: list[tuple[int, int]]) -> bool:  # one frame of tolerance
        return len(got) == len(want) and all(abs(g - w) <= 1 for gw, ww in zip(got, want) for g, w in zip(gw, ww))

    centre = frames[:, H // 2 - 20:H // 2 + 20, W // 2 - 30:W // 2 + 30]
    card_on = spans(differs(centre, BG))
    print(f"\ncard on (frames after started): {card_on}")
    assert near(card_on, [(fps, 2 * fps - 1)]), card_on
    first = start + card_on[0][0]
    assert np.abs(centre[first + 1:first + fps - 1].astype(int) - CARD).max() < 40  # the card's own pixels

    band = frames[:, H - s.overlays.caption_margin - 70:H - s.overlays.caption_margin]
    cap_on = spans(differs(band, BG))
    print(f"captions on (frames after started): {cap_on}")
    assert near(cap_on, [(round(0.2 * fps), round(0.8 * fps) - 1), (round(1.6 * fps), round(2.4 * fps) - 1)]), cap_on
