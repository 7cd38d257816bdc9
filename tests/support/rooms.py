"""A small in-process room for control-plane tests: 64x64 video, ultrafast x264, ipc sockets in a short temporary
folder (ipc paths are limited to ~107 bytes), no programme, one file recording; `extra` settings on top."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from flashtalk_live.config import load_settings
from flashtalk_live.daemon import Daemon


@contextmanager
def inprocess_room(extra: list[str] = (), control: str = '["ipc://{state_dir}/control.sock"]',
                   prepare=lambda folder: None) -> Iterator[Daemon]:
    short = Path(tempfile.mkdtemp(prefix="ftl-", dir="/tmp"))
    prepare(short)
    s = load_settings(None, [
        f'state_dir="{short}"', f"ingest.control={control}", 'ingest.events=["ipc://{state_dir}/events.sock"]',
        "video.width=64", "video.height=64", 'encoder.preset="ultrafast"', "encoder.video_bitrate=200000",
        "metrics.enabled=false", 'programme.playlist=""',
        f'outputs=[{{name="rec", url="{short / "recordings" / "rec.flv"}"}}]', *extra,
    ], environ={})
    d = Daemon(s)
    d.start()
    try:
        yield d
    finally:
        d.close()
        shutil.rmtree(short, ignore_errors=True)
