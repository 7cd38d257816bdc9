"""Settings for tests: a room in a temporary state directory with the still renderer, ipc sockets, no programme and
one file output; and the parts built from it the way the daemon builds them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flashtalk_live.settings import Settings
from flashtalk_live.config import load_settings
from flashtalk_live.playout.programme import Programme


# The tiny FlashTalk profile of the fake release (checkpoints/fake.py): 8 new frames per chunk (13 - 5 motion).
TINY_CHUNK_FRAMES = 8
TINY_PROFILE = 'base = "quality"\nheight = 64\nwidth = 32\nframe_num = 13\nmotion_frames = 5\n'


def tiny_release(root: Path) -> tuple[Path, Any]:
    """A fake release under root/models and TINY_PROFILE in root/tiny.toml: (root, the release)."""
    from flashtalk_live.checkpoints.fake import write_fake_release  # torch: only where a test asks for it

    rel = write_fake_release(root / "models")
    (root / "tiny.toml").write_text(TINY_PROFILE)
    return root, rel


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


def section_settings(**sections: Any) -> Settings:
    """Settings with only the given sections set (dicts of fields), for parts that never touch the state directory."""
    return Settings(state_dir="/nonexistent-state", **sections)


def flashtalk_settings(root: Path, chunk_frames: int, *extra: str, environ: dict[str, str] | None = None) -> Settings:
    """A tiny FlashTalk room on the CPU (float32, 48x80, `chunk_frames` per chunk, state under root/state);
    `extra` KEY=VALUE overrides (the release, the profile) win over these."""
    return load_settings(None, [
        'model.device="cpu"', 'model.dtype="float32"', f"video.chunk_frames={chunk_frames}", "video.width=48",
        "video.height=80", f'state_dir="{root / "state"}"', *extra,
    ], environ=environ or {})
