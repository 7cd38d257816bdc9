"""Reading recordings back with PyAV: codecs, timestamps, keyframes, gaps.

A plain module (not a conftest) so any test directory can `from rtmp_harness import ...`: pytest's prepend
import mode puts tests/ on sys.path, while `conftest` names a different module in each directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class MediaInfo:
    """What a recording holds, per stream type; times in seconds."""

    path: Path
    video_codec: str | None = None
    audio_codec: str | None = None
    width: int = 0
    height: int = 0
    fps: float = 0.0
    sample_rate: int = 0
    channels: int = 0
    video_pts: list[float] = field(default_factory=list)
    video_dts: list[float] = field(default_factory=list)
    audio_pts: list[float] = field(default_factory=list)
    keyframes: list[float] = field(default_factory=list)
    audio_end: float = 0.0  # pts + duration of the last audio packet
    video_end: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def video_packets(self) -> int:
        return len(self.video_pts)

    @property
    def audio_packets(self) -> int:
        return len(self.audio_pts)


def read_media(path: Path | str, decode: bool = False) -> MediaInfo:
    """Demux (and optionally decode) a recording with PyAV; a truncated tail (killed server) is tolerated."""
    import av

    info = MediaInfo(path=Path(path))
    with av.open(str(path)) as c:
        vs = c.streams.video[0] if c.streams.video else None
        as_ = c.streams.audio[0] if c.streams.audio else None
        if vs is not None:
            info.video_codec = vs.codec_context.name
            info.width, info.height = vs.codec_context.width, vs.codec_context.height
            info.fps = float(vs.average_rate or vs.guessed_rate or 0)
        if as_ is not None:
            info.audio_codec = as_.codec_context.name
            info.sample_rate = as_.codec_context.sample_rate
            info.channels = as_.codec_context.channels
        try:
            for p in c.demux():
                if p.pts is None or p.time_base is None:
                    continue
                t = float(p.pts * p.time_base)
                if vs is not None and p.stream.index == vs.index:
                    info.video_pts.append(t)
                    info.video_dts.append(float((p.dts if p.dts is not None else p.pts) * p.time_base))
                    if p.is_keyframe:
                        info.keyframes.append(t)
                    info.video_end = max(info.video_end, t + float((p.duration or 0) * p.time_base))
                elif as_ is not None and p.stream.index == as_.index:
                    info.audio_pts.append(t)
                    info.audio_end = max(info.audio_end, t + float((p.duration or 0) * p.time_base))
                if decode:
                    try:
                        p.decode()
                    except av.error.FFmpegError as e:
                        info.errors.append(str(e))
        except (av.error.FFmpegError, OSError) as e:  # truncated file
            info.errors.append(f"demux: {e}")
    return info


def max_gap(times: list[float]) -> float:
    """The largest step between consecutive timestamps (0 for fewer than two)."""
    s = sorted(times)
    return max((b - a for a, b in zip(s, s[1:])), default=0.0)


