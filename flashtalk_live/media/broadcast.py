"""The broadcast loop: each paced frame composed, encoded, tapped for the console and sent to every output."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from flashtalk_live.compose.compositor import Compositor
from flashtalk_live.media.encoder import Encoder
from flashtalk_live.playout.pacing import Pacer
from flashtalk_live.outputs.manager import OutputManager
from flashtalk_live.sdnotify import sd_notify, watchdog_interval_s
from flashtalk_live.chunks import Mark


class Broadcast:
    """Runs on the broadcast thread until the pacer stops. After each frame went out, on_frame(marks, segment_id,
    out_frame, renderer) hears what aired; on_air() runs once, at the first frame, before systemd hears READY. The systemd
    watchdog is fed from this loop only, so a broadcast that stops moving gets the service restarted; the same
    per-frame signal, `last_frame_at`, answers the liveness probe (probes.py).
    """

    def __init__(self, pacer: Pacer, compositor: Compositor, encoder: Encoder, outputs: OutputManager, *,
                 fps: int, audio_rate: int, tap: Callable[[np.ndarray, np.ndarray], None],
                 on_frame: Callable[[Sequence[Mark], str | None, int, str | None], None],
                 on_air: Callable[[], None]) -> None:
        """tap: gets each frame and its audio just encoded (the console's preview)."""
        self.pacer, self.compositor, self.encoder, self.outputs = pacer, compositor, encoder, outputs
        self.fps, self.audio_rate = fps, audio_rate
        self._tap, self._on_frame, self._on_air = tap, on_frame, on_air
        self.av_skew_s = 0.0
        self.last_frame_at: float | None = None  # time.monotonic() when the last frame went out; None before the first

    def run(self) -> None:
        """Returns once the pacer has stopped and the encoder's last packets went out; raises what a part raised."""
        wd = watchdog_interval_s()
        next_wd = 0.0
        ready = False
        for pf in self.pacer:
            frame = self.compositor.compose(pf.frame, pf.out_frame, pf.segment_id, pf.underrun)
            packets = self.encoder.encode(frame, pf.audio)
            self._tap(frame, pf.audio)
            self.outputs.send(packets)
            # measured between frames, so a status reader never sees a frame half-encoded
            self.av_skew_s = self.encoder.audio_samples_in / self.audio_rate - self.encoder.frames / self.fps
            self._on_frame(pf.marks, pf.segment_id, pf.out_frame, pf.renderer)
            now = time.monotonic()
            self.last_frame_at = now  # a float written without a lock: a probe never waits on this loop
            if not ready:
                ready = True
                self._on_air()
                sd_notify("READY=1\nSTATUS=on air")
            if wd is not None and now >= next_wd:
                sd_notify("WATCHDOG=1")
                next_wd = now + wd
        self.outputs.send(self.encoder.flush())
