"""What every output shares: the packet rebasing into one container, the status record, backoff."""

from __future__ import annotations

import threading
import time
from collections import deque
from fractions import Fraction
from typing import Any, Callable

from flashtalk_live.backoff import Backoff
from flashtalk_live.secrets import mask_url
from flashtalk_live.settings import OutputPolicy, OutputSettings

Publish = Callable[..., None]  # publish(type, **fields), queued by the manager, never run on the send() path


class Rate:
    """Bits per second over the last couple of seconds, from a running byte counter."""

    def __init__(self, window_s: float = 2.0) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, total_bytes: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._samples.append((now, total_bytes))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()

    def bps(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        if len(self._samples) < 2 or now - self._samples[-1][0] > self.window_s:
            return 0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return int((b1 - b0) * 8 / (t1 - t0)) if t1 > t0 else 0


class Rebaser:
    """Muxes the encoder's own packets into one container: starts at a keyframe, timestamps from 0.

    mux() rescales a packet in place and it must go on to other outputs untouched, so every field it
    changes is restored afterwards. Packets are never copied (copies break FFmpeg's fifo and cost time).
    """

    def __init__(self, container: Any, video_template: Any, audio_template: Any) -> None:
        self.container = container
        self.src_v, self.src_a = video_template, audio_template
        self.ov = container.add_stream_from_template(video_template)
        self.oa = container.add_stream_from_template(audio_template)
        self.origin: Fraction | None = None  # seconds of the encoder clock that map to 0 here
        self.last_video_s = Fraction(0)  # rebased time of the newest video packet

    def is_video(self, p: Any) -> bool:
        return p.stream is self.src_v or p.stream.index == self.src_v.index

    def started(self) -> bool:
        return self.origin is not None

    def media_seconds(self, p: Any) -> Fraction | None:
        """Where packet p would land in this container (None before the origin is set)."""
        if self.origin is None or p.dts is None:
            return None
        return Fraction(p.dts) * p.time_base - self.origin

    @staticmethod
    def is_priming(p: Any) -> bool:
        """An encoder's priming packet (AAC's first, stamped before encoder time 0): every output skips it, since
        nothing starts before the first keyframe at 0, and it is no program sound lost, so it is not counted as a
        dropped packet (issue 21: `dropped_packets: 1` on every output at start)."""
        return p.dts is not None and p.dts < 0

    def mux(self, p: Any) -> bool:
        """Mux p if it belongs here; False when dropped (before the first keyframe, or before the origin)."""
        is_v = self.is_video(p)
        if self.origin is None:
            if not (is_v and p.is_keyframe):
                return False
            self.origin = Fraction(p.dts) * p.time_base
        tb = p.time_base
        shift = round(self.origin / tb)
        pts, dts = p.pts, p.dts
        if dts - shift < 0:
            return False  # audio encoded just before the origin keyframe
        src = p.stream
        try:
            p.pts, p.dts = pts - shift, dts - shift
            p.stream = self.ov if is_v else self.oa
            self.container.mux(p)
        finally:
            p.stream = src
            p.time_base = tb
            p.pts, p.dts = pts, dts
        if is_v:
            self.last_video_s = Fraction(dts - shift) * tb
        return True


class Output:
    """One destination. send() is called from the broadcast thread and must never block; tick() from the
    manager's supervisor thread does the slow work (connects, deadlines, retries)."""

    kind = "output"

    def __init__(self, settings: OutputSettings, policy: OutputPolicy, video_template: Any, audio_template: Any,
                 request_keyframe: Callable[[], None], publish: Publish) -> None:
        self.settings = settings
        self.name = settings.name
        self.url = settings.url
        self.masked_url = mask_url(settings.url)
        self.policy = policy
        self.video_template, self.audio_template = video_template, audio_template
        self.request_keyframe = request_keyframe
        self._publish = publish
        self._lock = threading.RLock()
        self.backoff = Backoff(policy.backoff_initial_s, policy.backoff_max_s, policy.backoff_jitter)
        self.state = "connecting"
        self.reconnects = 0
        self.dropped_packets = 0
        self.sent_packets = 0
        self.last_error: str | None = None  # why it is not up now (cleared when it is up again)
        self.previous_error: str | None = None  # the last error it recovered from
        self.connected_since: float | None = None  # wall-clock epoch seconds
        self.rate = Rate()
        self._announced: str | None = None

    # -- called by the manager --------------------------------------------------------------------
    def send(self, packets: list[Any]) -> None:
        raise NotImplementedError

    def tick(self, now: float) -> None:
        """Supervisor work; default: nothing."""

    def close(self, timeout: float) -> None:
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {
                "name": self.name, "kind": self.kind, "url": self.masked_url, "state": self.state,
                "bitrate_bps": self.rate.bps(), "reconnects": self.reconnects,
                "dropped_packets": self.dropped_packets, "sent_packets": self.sent_packets,
                "last_error": self.last_error, "previous_error": self.previous_error,
                "connected_since": self.connected_since,
            }

    # -- shared state changes ---------------------------------------------------------------------
    def _set_up(self) -> None:
        self.state = "up"
        self.connected_since = time.time()
        if self.last_error is not None:  # up again: the error is history, not the output's state
            self.previous_error, self.last_error = self.last_error, None
        if self._announced != "up":
            self._announced = "up"
            self._publish("endpoint_up", output=self.name, url=self.masked_url, reconnects=self.reconnects)

    def _set_down(self, error: str | None, state: str = "down") -> None:
        if error:
            self.last_error = error
        self.state = state
        self.connected_since = None
        if self._announced != "down":
            self._announced = "down"
            self._publish("endpoint_down", output=self.name, url=self.masked_url, error=self.last_error,
                          reconnects=self.reconnects)
