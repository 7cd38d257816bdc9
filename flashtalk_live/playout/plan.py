"""Planned on-air times: when each clip is expected to start airing, from what is buffered, the queue ahead of it
and the measured render rate.

A clip already cut into the render-ahead buffer airs when the air reaches its first frame. A pending clip airs after
everything before it, and no sooner than its head start allows: with r the planning render rate (render seconds per
media second, margin included), the renderer needs r x the media cut before it, and the admission gate
(playout/admission.py) starts a clip only with head_start(D) seconds buffered ahead of the air. So, in seconds from
now, with t the end of what is planned before it and R when the renderer is done with it:

    start = max(t, R + head_start(D)),   t = start + D,   R = R + r * D

It is an estimate: a hiccup, an edit or a change of renderer moves it (events `rescheduled`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

RESCHEDULE_THRESHOLD_S = 2.0  # a planned start that moves by more than this publishes `rescheduled`


@dataclass(frozen=True)
class Planned:
    segment_id: str
    in_s: float  # seconds from now until its first frame airs
    state: Literal["buffered", "pending"]
    waits: str  # why it is not on air yet: "buffered", "queue_ahead" or "head_start"

    def as_dict(self, media_time_s: float) -> dict:
        return {"segment_id": self.segment_id, "planned_in_s": round(self.in_s, 2),
                "planned_media_time_s": round(media_time_s + self.in_s, 2), "state": self.state, "waits": self.waits}


def plan_on_air(*, fps: int, air_frame: int, cut_frame: int, cut_remaining_s: float,
                buffered: list[tuple[str, int]], pending: list[tuple[str, float]], rate: float | None,
                head_start: Callable[[float], float]) -> list[Planned]:
    """buffered: (segment_id, timeline frame of its start) of clips cut ahead of the air; pending: (segment_id,
    duration_s) in queue order; cut_frame: the timeline's end; cut_remaining_s: what is left of the clip being cut."""
    out = [Planned(sid, max(0.0, (f - air_frame) / fps), "buffered", "buffered") for sid, f in buffered]
    r = rate or 0.0
    t = max(0.0, (cut_frame - air_frame) / fps) + cut_remaining_s
    ready = r * cut_remaining_s  # when the renderer has cut and rendered what is ahead of the queue
    for sid, d in pending:
        earliest = ready + head_start(d)
        start = max(t, earliest)
        out.append(Planned(sid, start, "pending", "head_start" if earliest > t else "queue_ahead"))
        t, ready = start + d, ready + r * d
    return out
