"""Settings for tests: a room in a temporary state directory with the still renderer, ipc sockets, no programme and
one file output; and the parts built from it the way the daemon builds them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flashtalk_live.settings import Settings
from flashtalk_live.config import load_settings
from flashtalk_live.playout.programme import Programme


def room_settings(tmp_path: Path, *extra: str, output: Path | None = None) -> Settings:
    """A small fast room under tmp_path/state (128x128, ultrafast x264, metrics on a free port), recording to
    `output` (default tmp_path/rec.flv); `extra` KEY=VALUE overrides win over these."""
    rec = output or tmp_path / "rec.flv"
    return load_settings(None, [
        f'state_dir="{tmp_path / "state"}"',
        'ingest.control=["ipc://{state_dir}/control.sock"]', 'ingest.events=["ipc://{state_dir}/events.sock"]',
        "video.width=128", "video.height=128", 'encoder.preset="ultrafast"', "encoder.video_bitrate=300000",
        "metrics.port=0", f'outputs=[{{name="rec", url="{rec}"}}]', 'programme.playlist=""', *extra,
    ], environ={})


def load_programme(path: str | os.PathLike[str] | None, s: Settings, **kw: Any) -> Programme:
    """Programme.load with the sections of `s`, as the daemon calls it."""
    return Programme.load(path, s.expanded(s.programme), s.encoder, max_clip_s=s.ingest.max_clip_seconds, **kw)
