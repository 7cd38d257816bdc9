"""Health probes a scheduler can trust: GET /livez, /readyz and /startupz on the metrics/console port, no token.

One table, `PROBES`: each probe is a path, the kubelet probe that polls it, what it means and a pure check of the
room's `Vitals`. The HTTP servers (console/app.py, metrics.serve_metrics) answer a path in the table with
`RoomProbes.answer`; the Kubernetes manifests (deploy/kubernetes/) point their probes at these paths, and
tests/deploy/ checks that they do.

The contract:
* **/livez**: 200 while the broadcast loop advances: a frame went out less than `probes.live_stall_s` ago (the same
  per-frame signal that feeds systemd's watchdog, media/broadcast.py), or nothing has aired yet (model load, first
  chunk: the startup probe's business), or the room is stopping. 503 once the loop has stalled longer than that.
  A slow chunk, a full disk or a dead endpoint never stop the frames (the pacer holds the last frame, recordings pause,
  outputs reconnect in the background), so none of them fails it: a liveness probe restarting a healthy room is worse
  than none.
* **/readyz**: 200 once the room is on air with its configured renderer (`renderer.kind`), or on the still fallback
  once that has aired instead for `probes.ready_fallback_s`; 503 before the first frame, while stalled or stopping.
  Judged from the frames on air (playout/onair.py), not the renderer on duty, which switches a look-ahead earlier.
* **/startupz**: 200 once the first frame has aired (model load and warm-up happen before or beside it), 503 before.
* Every answer is one line of JSON: `{"probe": ..., "ok": ..., "reason": ...}`; the reason names numbers and the
  renderer kind, never a URL, key or token.
* The vitals are read from attributes the daemon's threads write without a lock (a float per frame), so a probe never
  waits on the loop it judges: a stalled broadcast thread cannot stall its own probe. A stopped *process* answers
  nothing at all; the kubelet counts that timeout as a failure too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

from flashtalk_live.settings import ProbeSettings


@dataclass(frozen=True)
class Vitals:
    """What the probes judge, read at the moment of the request (Daemon.vitals)."""

    state: str  # the daemon's state: starting, on_air, stopping
    uptime_s: float
    since_last_frame_s: float | None  # seconds since the broadcast loop last sent a frame; None: none aired yet
    renderer: str  # the configured renderer kind (renderer.kind)
    fallback_s: float | None  # how long the still fallback has aired instead of that renderer; None: not on it


Check = Callable[[Vitals, ProbeSettings], "tuple[bool, str]"]


def _stalled(v: Vitals, p: ProbeSettings) -> str | None:
    if v.since_last_frame_s is not None and v.since_last_frame_s > p.live_stall_s and v.state != "stopping":
        return f"broadcast stalled: no frame for {v.since_last_frame_s:.1f} s (probes.live_stall_s = {p.live_stall_s:g})"
    return None


def _before_air(v: Vitals, p: ProbeSettings, alive: bool) -> tuple[bool, str] | None:
    """The verdict shared by liveness and readiness while stalled, stopping or not on air yet (None otherwise):
    a stall fails both; stopping or starting is alive but not ready."""
    stalled = _stalled(v, p)
    if stalled:
        return False, stalled
    if v.state == "stopping":
        return alive, "stopping: the broadcast drains and closes"
    if v.since_last_frame_s is None:
        return alive, f"starting for {v.uptime_s:.0f} s: " + \
            ("nothing aired yet (the startup probe judges this)" if alive else "not on air yet")
    return None


def live(v: Vitals, p: ProbeSettings) -> tuple[bool, str]:
    early = _before_air(v, p, alive=True)
    if early is not None:
        return early
    return True, f"broadcast advancing: last frame {v.since_last_frame_s:.2f} s ago"


def ready(v: Vitals, p: ProbeSettings) -> tuple[bool, str]:
    early = _before_air(v, p, alive=False)
    if early is not None:
        return early
    if v.fallback_s is None:
        return True, f"on air with the {v.renderer} renderer"
    if v.fallback_s >= p.ready_fallback_s:
        return True, (f"on air on the still fallback for {v.fallback_s:.0f} s, the {v.renderer} renderer is not "
                      f"(probes.ready_fallback_s = {p.ready_fallback_s:g})")
    return False, (f"on air on the still fallback, waiting for the {v.renderer} renderer: {v.fallback_s:.0f} s of "
                   f"probes.ready_fallback_s = {p.ready_fallback_s:g}")


def started(v: Vitals, p: ProbeSettings) -> tuple[bool, str]:
    if v.since_last_frame_s is None:
        return False, f"starting for {v.uptime_s:.0f} s: no frame aired yet"
    return True, f"on air (state {v.state})"


@dataclass(frozen=True)
class Probe:
    name: str
    kubelet: str  # the Kubernetes container probe that polls it
    meaning: str
    check: Check

    @property
    def path(self) -> str:
        return "/" + self.name


PROBES: dict[str, Probe] = {p.path: p for p in (
    Probe("livez", "livenessProbe", "the broadcast loop advances (503: stalled longer than probes.live_stall_s; "
                                    "restart the room)", live),
    Probe("readyz", "readinessProbe", "on air with the configured renderer, or on the still fallback after "
                                      "probes.ready_fallback_s (503: not ready to take clips)", ready),
    Probe("startupz", "startupProbe", "the first frame has aired (503: still starting)", started),
)}


class RoomProbes:
    """Answers the probe paths of one room from `vitals()`."""

    def __init__(self, settings: ProbeSettings, vitals: Callable[[], Vitals]) -> None:
        self.settings = settings
        self.vitals = vitals

    def check(self, path: str) -> tuple[bool, str]:
        return PROBES[path].check(self.vitals(), self.settings)

    def answer(self, path: str) -> tuple[int, bytes] | None:
        """(HTTP status, one-line JSON body) for a probe path; None for any other path."""
        probe = PROBES.get(path)
        if probe is None:
            return None
        ok, reason = probe.check(self.vitals(), self.settings)
        body = json.dumps({"probe": probe.name, "ok": ok, "reason": reason}) + "\n"
        return (200 if ok else 503), body.encode()
