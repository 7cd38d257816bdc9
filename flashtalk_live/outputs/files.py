"""Local recordings: .flv or .mp4 files, optionally cut into segments of segment_seconds at keyframes.

Written in-process: a local file never hangs like a network peer, and opening one is a fast syscall.
Names are expanded per file: strftime codes (%Y%m%d-%H%M%S, local time) and {n} (segment number
from 0); an existing file is never overwritten (-1, -2, ... is appended). MP4 is written fragmented
(moov up front, a fragment per keyframe) so a recording cut short by a crash still plays; FLV needs no
trailer to play either. Retention (output_policy.recording_max_*) runs at every open: see retention.py.
"""

from __future__ import annotations

import os
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from flashtalk_live import fdreserve
from flashtalk_live.log import get_logger
from flashtalk_live.outputs.base import Output, Rebaser
from flashtalk_live.outputs.kinds import FILE_FORMATS, file_path
from flashtalk_live.outputs.retention import apply_retention

log = get_logger("outputs.files")

PREV_GRACE_S = Fraction(1, 5)  # audio this far past a cut can no longer belong to the previous segment
# flush_packets: each packet (each fragment for mp4) reaches the file at once; PyAV's default 256 KiB write
# buffer lost seconds of a recording to a crash (and left a 0-byte file after a short one).
_COMMON = {"flush_packets": "1"}
# Every recording file open for writing in this process (any FileOutput): another output's retention, whose template
# may name it too, must leave it alone.
_OPEN: set[Path] = set()
_OPEN_LOCK = threading.Lock()


def _opened(path: Path | None) -> None:
    if path is not None:
        with _OPEN_LOCK:
            _OPEN.add(path)


def _released(path: Path | None) -> None:
    if path is not None:
        with _OPEN_LOCK:
            _OPEN.discard(path)


def open_recordings() -> set[Path]:
    with _OPEN_LOCK:
        return set(_OPEN)


_FORMAT_OPTIONS = {
    "flv": dict(_COMMON),
    "mp4": {**_COMMON, "movflags": "+frag_keyframe+empty_moov+default_base_moof"},
}


class FileOutput(Output):
    """A recording (segmented when segment_seconds is set); reopened with backoff after an I/O error."""

    kind = "file"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.template = template = Path(file_path(self.url)).expanduser()  # checked by the kind's validate()
        self.format = FILE_FORMATS[template.suffix.lower()]
        self.segment_seconds = self.settings.segment_seconds
        # FLV stamps packets in 31-bit milliseconds (24.8 days): a file is cut over before that, at the same age as
        # an RTMP connection's planned reconnect; mp4 has 64-bit times.
        self.max_file_s = float(self.policy.planned_reconnect_hours) * 3600.0 if self.format == "flv" else None
        self._cut_requested = False
        self.container: Any = None
        self.rebaser: Rebaser | None = None
        self.path: Path | None = None
        self.segments = 0  # files opened
        self.files: list[str] = []
        self.bytes = 0
        self.retention_removed = 0  # files deleted by the retention policy
        self.next_attempt = 0.0
        self.closed = False
        self.paused: str | None = None  # why recording is paused (a disk under its watermark), or None
        self._failed = False
        self._kf_requested = False
        self._prev: tuple[Any, Rebaser] | None = None  # the segment just cut, still taking late audio
        self._prev_path: Path | None = None
        self._prev_cut = Fraction(0)
        self.state = "connecting"

    def _expand(self, n: int) -> Path:
        name = time.strftime(str(self.template), time.localtime()).replace("{n}", str(n))
        p = Path(name)
        k = 1
        while p.exists():
            p = Path(name).with_name(f"{Path(name).stem}-{k}{Path(name).suffix}")
            k += 1
        return p

    def _open(self) -> None:
        path = self._expand(self.segments)
        path.parent.mkdir(parents=True, exist_ok=True)
        with fdreserve.released():  # a socket flood cannot stop a new segment (EMFILE here is a retried failure)
            container = av.open(str(path), "w", format=self.format, container_options=_FORMAT_OPTIONS[self.format])
        try:
            rebaser = Rebaser(container, self.video_template, self.audio_template)
            if self.format == "mp4":  # FLV's codec tags mean nothing to mp4; let the muxer choose
                rebaser.ov.codec_context.codec_tag = "avc1"
                rebaser.oa.codec_context.codec_tag = "mp4a"
            container.start_encoding()
        except Exception:
            container.close()
            raise
        self.container, self.rebaser, self.path = container, rebaser, path
        _opened(path)
        self._kf_requested = self._cut_requested = False
        self.segments += 1
        self.files.append(str(path))
        log.info("recording_open", output=self.name, path=str(path))
        self._retain()

    def _retain(self) -> None:
        """Apply output_policy's retention to this output's files (at every open: at start and at each cut)."""
        pol = self.policy
        keep = [Path(f) for f in self.files[-2:]]
        try:
            removed = apply_retention(self.template, pol.recording_max_age_hours * 3600.0, pol.recording_max_bytes,
                                      keep=keep, ignore=open_recordings() - set(keep))
        except OSError as e:  # retention must never stop a recording
            log.warning("recording_retention_failed", output=self.name, error=str(e))
            return
        if removed:
            self.retention_removed += len(removed)
            log.info("recordings_removed", output=self.name, files=[str(p) for p in removed[:20]], count=len(removed),
                     max_age_hours=pol.recording_max_age_hours, max_bytes=pol.recording_max_bytes)

    def _close_container(self) -> None:
        c, self.container, self.rebaser = self.container, None, None
        self._close(c)
        if c is not None:
            _released(self.path)
        self._close_prev()
        self._drop_if_empty(self.path)

    def _drop_if_empty(self, path: Path | None) -> None:
        """A file that never got a byte (a full disk at open) is removed rather than left as a 0-byte recording."""
        try:
            if path is not None and path.stat().st_size == 0:
                path.unlink()
                if self.files and self.files[-1] == str(path):
                    self.files.pop()
        except OSError:
            pass

    def device(self) -> int | None:
        """The file system the recordings go to (the nearest existing folder of the template)."""
        p = self.template.parent
        while True:
            try:
                return os.stat(p).st_dev
            except OSError:
                if p.parent == p:
                    return None
                p = p.parent

    def pause(self, reason: str) -> None:
        """Finalise the open file and write nothing until resume() (the disk is under its watermark)."""
        with self._lock:
            if self.paused is None and not self.closed:
                self.paused = reason
                self._close_container()
                self._set_down(reason, state="paused")
                log.warning("recording_paused", output=self.name, reason=reason)

    def resume(self) -> None:
        """Record again: the next keyframe opens a new file."""
        with self._lock:
            if self.paused is not None:
                self.paused = None
                self.next_attempt = 0.0
                self._failed = False
                log.info("recording_resumed", output=self.name)

    def _close(self, c: Any) -> None:
        if c is not None:
            try:
                c.close()
            except Exception as e:  # noqa: BLE001 - a failed trailer must not stop the broadcast
                self.last_error = f"close: {type(e).__name__}: {e}"

    def _close_prev(self) -> None:
        prev, self._prev = self._prev, None
        if prev is not None:
            self._close(prev[0])
            _released(self._prev_path)

    def _to_prev(self, p: Any) -> bool:
        """True when p (audio from before the last cut) went into the previous segment."""
        assert self._prev is not None
        container, rb = self._prev
        t = Fraction(p.dts) * p.time_base
        if rb.is_video(p) or t >= self._prev_cut:
            if t >= self._prev_cut + PREV_GRACE_S:
                self._close_prev()  # nothing more can belong to it
            return False
        try:
            if rb.mux(p):
                self.sent_packets += 1
                self.bytes += p.size
                return True
        except Exception as e:  # noqa: BLE001 - the old segment is done either way
            self.last_error = f"{type(e).__name__}: {e}"
            self._close_prev()
        return False

    def _fail(self, e: BaseException) -> None:
        self._close_container()
        self._failed = True
        delay = self.backoff.next_delay()
        self.next_attempt = time.monotonic() + delay
        log.warning("recording_failed", output=self.name, error=str(e), retry_in_s=round(delay, 2))
        self._set_down(f"{type(e).__name__}: {e}")

    def send(self, packets: list[Any]) -> None:
        with self._lock:
            if self.closed:
                return
            if self.paused is not None:
                self.dropped_packets += len(packets)
                return
            for i, p in enumerate(packets):
                if self._prev is not None and self._to_prev(p):
                    continue
                rb = self.rebaser
                if rb is not None and self.max_file_s is not None and not self._cut_requested:
                    t = rb.media_seconds(p)
                    if t is not None and t >= self.max_file_s:
                        self._cut_requested = True  # cut on the next frame, not up to a GOP later
                        self.request_keyframe()
                if rb is not None and (self.segment_seconds or self._cut_requested) and p.is_keyframe \
                        and rb.is_video(p):
                    t = rb.media_seconds(p)
                    due = self._cut_requested or (self.segment_seconds is not None and t is not None
                                                  and t >= self.segment_seconds)
                    if t is not None and due:
                        # The next segment starts on this keyframe; the old one stays open for the audio
                        # the AAC encoder still owes it (it lags video by a packet or two).
                        self._close_prev()  # (closed long ago in practice: a GOP is longer than its grace)
                        self._prev, self._prev_cut = (self.container, rb), Fraction(p.dts) * p.time_base
                        self._prev_path = self.path
                        self.container = self.rebaser = None
                        rb = None
                if rb is None:
                    if time.monotonic() < self.next_attempt:
                        self.dropped_packets += 1
                        continue
                    if self._failed:  # a retry after an error counts like an RTMP reconnect
                        self.reconnects += 1
                        self._failed = False
                    try:
                        self._open()
                    except Exception as e:  # noqa: BLE001 - disk full, permission, bad path: retry later
                        self.dropped_packets += len(packets) - i
                        self._fail(e)
                        return
                    rb = self.rebaser
                    assert rb is not None
                try:
                    if rb.mux(p):
                        self.sent_packets += 1
                        self.bytes += p.size
                        if self.state != "up":
                            self.backoff.reset()
                            self._set_up()
                    elif not rb.is_priming(p):
                        self.dropped_packets += 1
                except Exception as e:  # noqa: BLE001
                    self.dropped_packets += len(packets) - i
                    self._fail(e)
                    return
            if self.rebaser is not None and not self.rebaser.started() and not self._kf_requested:
                self._kf_requested = True  # a fresh file waits for a keyframe: ask for one now (segments
                self.request_keyframe()  # after the first start on the keyframe that cut them)
            self.rate.add(self.bytes)

    def close(self, timeout: float) -> None:
        with self._lock:
            self.closed = True
            self._close_container()
            self._set_down(None, state="down")

    def status(self) -> dict[str, Any]:
        st = super().status()
        with self._lock:
            st.update(path=str(self.path) if self.path else None, segments=self.segments, bytes=self.bytes,
                      paused=self.paused, retention_removed=self.retention_removed)
        return st
