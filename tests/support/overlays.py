"""The overlay tests' room: a flat background daemon recording to a file, and readers of its frames."""

from __future__ import annotations

import os
from typing import Any

import av
import numpy as np
import pytest

from flashtalk_live.compose.text import FONT_CANDIDATES
from flashtalk_live.config import load_settings
from flashtalk_live.daemon import Daemon

from support.audio import wav_bytes
from support.fakes import PaintRenderer

W, H = 288, 512
BG = (90, 110, 130)
CARD = (240, 40, 200)
needs_cjk_font = pytest.mark.skipif(not any(os.path.isfile(p) for p, _ in FONT_CANDIDATES),
                                    reason="no CJK font on this machine (.ci/run installs fonts-noto-cjk)")


def quiet_tone(seconds: float, rate: int = 16000) -> bytes:
    """A quiet 220 Hz WAV clip."""
    return wav_bytes(seconds, 220.0, rate, amplitude=0.3)


def decode(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def differs(region: np.ndarray, colour, tol: int = 40) -> np.ndarray:
    """Per frame: whether any pixel of region [n, h, w, 3] is far from `colour`."""
    return (np.abs(region.astype(int) - np.array(colour)).max(axis=-1) > tol).reshape(len(region), -1).any(axis=1)


def flat_daemon(tmp_path, *overrides: str) -> tuple[Daemon, Any, dict[str, int], np.ndarray]:
    """A daemon (not started) airing a flat background into tmp_path/rec.flv, with the frame of each clip's
    `started` / `finished` event recorded in `marks`, and a plain CARD-coloured card picture."""
    s = load_settings(None, [
        f'state_dir="{tmp_path / "state"}"',
        'ingest.control=["ipc://{state_dir}/control.sock"]', 'ingest.events=["ipc://{state_dir}/events.sock"]',
        f"video.width={W}", f"video.height={H}", 'encoder.preset="ultrafast"', "encoder.video_bitrate=600000",
        "metrics.enabled=false", f'outputs=[{{name="rec", url="{tmp_path / "rec.flv"}"}}]', 'programme.playlist=""',
        "renderer.lookahead_chunks=2", *overrides,
    ], environ={})
    d = Daemon(s, still=PaintRenderer(W, H, name="flat", colour=lambda i: BG))
    marks: dict[str, int] = {}
    d.events.subscribe(lambda e: marks.__setitem__(f"{e['type']}:{e.get('segment_id')}", e["frame"])
                       if e["type"] in ("started", "finished") else None)
    card = np.zeros((60, 80, 3), np.uint8)
    card[:] = CARD
    return d, s, marks, card
