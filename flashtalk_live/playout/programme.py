"""The room's programme: a looping playlist of clips (M3U or TOML) that plays whenever the queue is empty.

Formats (paths are relative to the playlist file):

M3U (`.m3u`, `.m3u8`, or any file starting with `#EXTM3U`)::

    #EXTM3U
    #EXT-X-SHUFFLE:no            # optional: yes|no, overrides programme.shuffle
    #EXT-X-DEFAULT-PAUSE:1.5     # optional: silence after every clip, overrides programme.pause_seconds
    #EXTINF:12,pitch-a           # optional: the title names the next clip (segment ids use it)
    clips/pitch-a.m4a
    #EXT-X-PAUSE:3               # silence after the clip just above, overriding the default
    clips/pitch-b.wav

TOML (`.toml`)::

    shuffle = false              # optional
    pause_s = 1.5                # optional default pause after each clip
    [[clip]]
    path = "clips/pitch-a.m4a"
    name = "pitch-a"             # optional, defaults to the file stem
    pause_s = 3                  # optional

Every clip is validated at load (exists, has an audio stream, decodes): a bad one is logged and skipped, never fatal.
A playlist that is missing or unparsable yields an empty programme (idle silence) that keeps watching the file.
The file is re-read when its mtime or size changes, checked at most every programme.reload_check_seconds.
The list loops forever, in order or reshuffled every cycle. Programme clip ids are `programme:<name>:<n>` with n the
running play count. Clips are decoded (by the ingest decoder, flashtalk_live.audio) when they come up, so a
long playlist does not sit in memory.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import av
import numpy as np

from flashtalk_live.audio import AudioError, ClipAudio, sniff_demuxer
from flashtalk_live.audio import decode_audio as ingest_decode
from flashtalk_live.log import get_logger
from flashtalk_live.settings import EncoderSettings, ProgrammeSettings, loads_toml, resolve_path

_log = get_logger("programme")


class PlaylistError(ValueError):
    """A playlist file that cannot be parsed at all."""


class ClipDecodeError(ValueError):
    """A clip file that cannot be decoded into audio."""


def _hint(path: str) -> str | None:
    return os.path.splitext(path)[1].lower().lstrip(".") or None


def decode_audio(path: str | os.PathLike[str], rate: int, channels: int, max_seconds: float | None = None) -> ClipAudio:
    """Decode a clip file with the ingest decoder (same formats and channel mapping as pushed clips) -> ClipAudio."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ClipDecodeError(f"{p}: {'file not found' if isinstance(e, FileNotFoundError) else e}") from None
    try:
        return ingest_decode(data, format=_hint(p), rate=rate, out_channels=channels,
                             max_seconds=math.inf if max_seconds is None else max_seconds)
    except AudioError as e:
        raise ClipDecodeError(f"{p}: {e.reason}") from None


def probe_audio(path: str | os.PathLike[str]) -> float | None:
    """Cheap validation at load: a format the ingest decoder accepts, an audio stream, first packets decode.

    Returns duration_s when the container knows it. The full decode happens when the clip comes up.
    """
    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise ClipDecodeError(f"{p}: {'file not found' if isinstance(e, FileNotFoundError) else e}") from None
    demuxer = sniff_demuxer(head, _hint(p))
    if demuxer is None:
        raise ClipDecodeError(f"{p}: unrecognised audio format (WAV, MP3, AAC/M4A, FLAC, Ogg/Opus are supported)")
    try:
        with av.open(p, "r", format=demuxer) as container:
            if not container.streams.audio:
                raise ClipDecodeError(f"{p}: no audio stream")
            stream = container.streams.audio[0]
            got = 0
            for frame in container.decode(stream):
                got += frame.samples
                if got >= 4096:
                    break
            if got == 0:
                raise ClipDecodeError(f"{p}: no decodable audio")
            if container.duration:
                return container.duration / 1_000_000
            if stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
            return None
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise ClipDecodeError(f"{p}: cannot decode audio as {demuxer} ({getattr(e, 'strerror', None) or e})") from None


@dataclass(frozen=True)
class PlaylistEntry:
    path: Path
    name: str
    pause_s: float  # silence after this clip
    duration_s: float | None = None


@dataclass
class ParsedPlaylist:
    entries: list[PlaylistEntry]  # syntactically valid, not yet checked on disk
    shuffle: bool
    problems: list[str] = field(default_factory=list)


@dataclass
class ProgrammeItem:
    """What the timeline plays next from the programme: a decoded clip or a pause."""

    kind: Literal["clip", "pause"]
    name: str
    segment_id: str | None = None
    audio: ClipAudio | None = None
    pause_s: float = 0.0
    entry: PlaylistEntry | None = None


_TRUE = {"yes", "true", "1", "on"}
_FALSE = {"no", "false", "0", "off"}


def _nonneg_float(raw: Any, what: str, problems: list[str]) -> float | None:
    try:
        v = float(raw)
    except (TypeError, ValueError):
        problems.append(f"{what}: expected seconds >= 0, got {raw!r}")
        return None
    if not (v >= 0 and np.isfinite(v)):
        problems.append(f"{what}: expected seconds >= 0, got {raw!r}")
        return None
    return v


def parse_m3u(text: str, base: Path, shuffle: bool, pause_s: float) -> ParsedPlaylist:
    problems: list[str] = []
    raw: list[dict[str, Any]] = []
    title: str | None = None
    for no, line in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            tag, _, value = line.partition(":")
            tag = tag.upper()
            value = value.strip()
            if tag == "#EXTINF":
                title = value.partition(",")[2].strip() or None
            elif tag == "#EXT-X-PAUSE":
                v = _nonneg_float(value, f"line {no} #EXT-X-PAUSE", problems)
                if v is not None:
                    if raw:
                        raw[-1]["pause_s"] = v
                    else:
                        problems.append(f"line {no}: #EXT-X-PAUSE before any clip is ignored")
            elif tag == "#EXT-X-DEFAULT-PAUSE":
                v = _nonneg_float(value, f"line {no} #EXT-X-DEFAULT-PAUSE", problems)
                if v is not None:
                    pause_s = v
            elif tag == "#EXT-X-SHUFFLE":
                if value.lower() in _TRUE:
                    shuffle = True
                elif value.lower() in _FALSE:
                    shuffle = False
                else:
                    problems.append(f"line {no}: #EXT-X-SHUFFLE expects yes or no, got {value!r}")
            continue  # #EXTM3U and plain comments
        if "://" in line:
            problems.append(f"line {no}: {line!r}: only local files are supported")
            title = None
            continue
        raw.append({"path": line, "name": title, "pause_s": None, "line": no})
        title = None
    entries = [
        PlaylistEntry(
            resolve_path(r["path"], base),
            r["name"] or Path(r["path"]).stem,
            pause_s if r["pause_s"] is None else r["pause_s"],
        )
        for r in raw
    ]
    return ParsedPlaylist(entries, shuffle, problems)


def parse_toml(text: str, base: Path, shuffle: bool, pause_s: float) -> ParsedPlaylist:
    data = loads_toml(text, "playlist", PlaylistError)
    problems: list[str] = []
    for key in sorted(set(data) - {"shuffle", "pause_s", "clip"}):
        problems.append(f"unknown top-level key {key!r} ignored (expected shuffle, pause_s, [[clip]])")
    if "shuffle" in data:
        if isinstance(data["shuffle"], bool):
            shuffle = data["shuffle"]
        else:
            problems.append(f"shuffle: expected true or false, got {data['shuffle']!r}")
    if "pause_s" in data:
        v = _nonneg_float(data["pause_s"], "pause_s", problems)
        if v is not None and not isinstance(data["pause_s"], bool):
            pause_s = v
    clips = data.get("clip", [])
    if not isinstance(clips, list) or not all(isinstance(c, dict) for c in clips):
        raise PlaylistError("'clip' must be an array of tables: [[clip]] path = \"...\"")
    entries: list[PlaylistEntry] = []
    for i, c in enumerate(clips, 1):
        for key in sorted(set(c) - {"path", "name", "pause_s"}):
            problems.append(f"clip {i}: unknown key {key!r} ignored (expected path, name, pause_s)")
        path = c.get("path")
        if not isinstance(path, str) or not path:
            problems.append(f"clip {i}: missing 'path' string, skipped")
            continue
        if "://" in path:
            problems.append(f"clip {i}: {path!r}: only local files are supported")
            continue
        p = pause_s
        if "pause_s" in c:
            v = _nonneg_float(c["pause_s"], f"clip {i} pause_s", problems)
            p = v if v is not None else pause_s
        name = c.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            problems.append(f"clip {i}: name must be a non-empty string, using the file stem")
            name = None
        entries.append(PlaylistEntry(resolve_path(path, base), name or Path(path).stem, p))
    return ParsedPlaylist(entries, shuffle, problems)


def parse_playlist(path: Path, text: str, shuffle: bool, pause_s: float) -> ParsedPlaylist:
    """Pick the format from the extension (.m3u/.m3u8/.toml) or, failing that, the first line."""
    ext = path.suffix.lower()
    base = path.parent
    if ext in (".m3u", ".m3u8") or text.lstrip("\ufeff").startswith("#EXTM3U"):
        return parse_m3u(text, base, shuffle, pause_s)
    if ext == ".toml":
        return parse_toml(text, base, shuffle, pause_s)
    raise PlaylistError(f"unknown playlist format {ext or '(no extension)'}: use .m3u, .m3u8 or .toml")


class Programme:
    """The looping playlist. `next_item()` is called by the timeline's thread only."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        programme: ProgrammeSettings,
        encoder: EncoderSettings,
        *,
        max_clip_s: float,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.path = Path(os.fspath(path)).expanduser() if path is not None else None
        self.rate: int = encoder.audio_rate
        self.channels: int = encoder.audio_channels
        self.default_shuffle: bool = programme.shuffle
        self.default_pause: float = programme.pause_seconds
        self.reload_check_s: float = programme.reload_check_seconds
        self.max_clip_s: float = max_clip_s  # ingest.max_clip_seconds: longer programme clips are skipped
        self._clock = clock
        self._rng = rng or random.Random()
        self.entries: list[PlaylistEntry] = []
        self.shuffle = self.default_shuffle
        self.skipped: list[tuple[str, str]] = []  # (path or line, reason)
        self.problems: list[str] = []
        self.loads = 0
        self.cycle = 0
        self.plays = 0
        self._order: list[int] = []
        self._pos = 0
        self._pending_pause = 0.0
        self._rewound: PlaylistEntry | None = None
        self._last: PlaylistEntry | None = None
        self._dead: set[Path] = set()  # failed to decode at play time; retried after the next reload
        self._stamp: tuple[int, int] | None = None
        self._next_check = 0.0

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None, programme: ProgrammeSettings, encoder: EncoderSettings,
             **kw: Any) -> "Programme":
        """Build and load a programme; never raises for a bad playlist (it logs and plays what it can)."""
        prog = cls(path, programme, encoder, **kw)
        prog.reload(force=True)
        return prog

    # -- loading ----------------------------------------------------------------------------------
    def _stat(self) -> tuple[int, int] | None:
        try:
            if self.path is None:
                return None
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def maybe_reload(self) -> bool:
        """Re-read the playlist if it changed; checked at most every reload_check_seconds."""
        now = self._clock()
        if self.path is None or now < self._next_check:
            return False
        self._next_check = now + self.reload_check_s
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            if stamp is None and self._stamp is not None:
                self._log_once_missing()
            return False
        return self.reload()

    def _log_once_missing(self) -> None:
        if self._stamp != (-1, -1):
            _log.warning("playlist_missing", path=str(self.path), note="keeping the current programme")
            self._stamp = (-1, -1)

    def reload(self, force: bool = False) -> bool:
        """Parse and validate the playlist now. On failure the current list stays (empty on the first load)."""
        if self.path is None:
            return False
        self._next_check = self._clock() + self.reload_check_s
        stamp = self._stat()
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            _log.error("playlist_unreadable", path=str(self.path), error=str(e))
            self._stamp = (-1, -1)
            return False
        self._stamp = stamp
        try:
            parsed = parse_playlist(self.path, text, self.default_shuffle, self.default_pause)
        except PlaylistError as e:
            _log.error("playlist_invalid", path=str(self.path), error=str(e), note="keeping the current programme")
            self.problems = [str(e)]
            return False
        skipped: list[tuple[str, str]] = []
        valid: list[PlaylistEntry] = []
        for entry in parsed.entries:
            try:
                dur = probe_audio(entry.path)
            except ClipDecodeError as err:
                skipped.append((str(entry.path), str(err)))
                _log.error("playlist_clip_skipped", playlist=str(self.path), clip=str(entry.path), error=str(err))
                continue
            valid.append(PlaylistEntry(entry.path, entry.name, entry.pause_s, dur))
        for msg in parsed.problems:
            _log.warning("playlist_problem", playlist=str(self.path), problem=msg)
        self._install(valid, parsed.shuffle)
        self.skipped, self.problems = skipped, parsed.problems
        self.loads += 1
        _log.info(
            "playlist_loaded", path=str(self.path), clips=len(valid), skipped=len(skipped), shuffle=parsed.shuffle,
            total_s=round(sum(e.duration_s or 0.0 for e in valid), 1),
        )
        return True

    def _install(self, entries: list[PlaylistEntry], shuffle: bool) -> None:
        old_last = self._last
        self.entries, self.shuffle = entries, shuffle
        self._dead.clear()
        if self._rewound is not None and self._rewound.path not in {e.path for e in entries}:
            self._rewound = None
        # Resume where we left off: in order, continue after the last clip played if it is still listed.
        self._order, self._pos = [], 0
        if entries and not shuffle and old_last is not None:
            paths = [e.path for e in entries]
            if old_last.path in paths:
                self._order = list(range(len(entries)))
                self._pos = paths.index(old_last.path) + 1

    # -- playing ----------------------------------------------------------------------------------
    def _new_cycle(self) -> None:
        order = list(range(len(self.entries)))
        if self.shuffle and len(order) > 1:
            self._rng.shuffle(order)
            # Never the same clip twice in a row across the cycle boundary.
            if self._last is not None and self.entries[order[0]].path == self._last.path:
                order[0], order[-1] = order[-1], order[0]
        self._order, self._pos = order, 0
        self.cycle += 1

    def _play(self, entry: PlaylistEntry) -> ProgrammeItem | None:
        try:
            audio = decode_audio(entry.path, self.rate, self.channels, self.max_clip_s)
        except ClipDecodeError as e:
            self._dead.add(entry.path)
            self.skipped.append((str(entry.path), str(e)))
            _log.error("programme_clip_failed", clip=str(entry.path), error=str(e))
            return None
        self.plays += 1
        self._last = entry
        self._pending_pause = entry.pause_s
        return ProgrammeItem("clip", entry.name, f"programme:{entry.name}:{self.plays}", audio, 0.0, entry)

    def next_item(self) -> ProgrammeItem | None:
        """The next clip or pause, looping forever; None when nothing is playable (idle silence)."""
        self.maybe_reload()
        if self._rewound is not None:
            entry, self._rewound = self._rewound, None
            item = self._play(entry)
            if item is not None:
                return item
        if self._pending_pause > 0:
            p, self._pending_pause = self._pending_pause, 0.0
            return ProgrammeItem("pause", "pause", None, None, p)
        for _ in range(len(self.entries) + 1):
            if not self.entries or len(self._dead) >= len({e.path for e in self.entries}):
                return None
            if self._pos >= len(self._order):
                self._new_cycle()
            entry = self.entries[self._order[self._pos]]
            self._pos += 1
            if entry.path in self._dead:
                continue
            item = self._play(entry)
            if item is not None:
                return item
        return None

    def checkpoint(self) -> tuple[Any, ...]:
        """Where the programme stands now (what it plays next), for `restore`: the timeline keeps one per chunk it
        cuts, so a re-plan that gives back the buffered future gives the programme back exactly where it stood."""
        return (self.entries, self._order, self._pos, self._pending_pause, self._rewound, self._last, self.cycle)

    def restore(self, checkpoint: tuple[Any, ...]) -> bool:
        """Go back to a `checkpoint` (False, and nothing changed, when the playlist was reloaded since: its order no
        longer applies). Play counts go on, so an item played again gets a new segment id."""
        entries, order, pos, pause, rewound, last, cycle = checkpoint
        if entries is not self.entries:
            return False
        self._order, self._pos, self._pending_pause, self._rewound, self._last, self.cycle = \
            order, pos, pause, rewound, last, cycle
        return True

    def rewind(self, item: ProgrammeItem) -> None:
        """A clip cut by play_now: play it again from its start when the programme resumes, without its pause."""
        if item.kind == "clip" and item.entry is not None:
            self._rewound = item.entry
            self._pending_pause = 0.0

    @property
    def total_seconds(self) -> float:
        return sum(e.duration_s or 0.0 for e in self.entries)
