"""When may a queue clip start: only once the rest of it can be rendered before it is needed on air.

A clip of D seconds cut into the timeline now starts airing after B seconds (what is already buffered ahead of the
air). Its n chunks of c seconds are rendered one after another at r render seconds per media second, so chunk i is
ready r*c*(i+1) s from now and needed B + c*i s from now. No chunk is late when

    B >= max(r*c, n*r*c - (n-1)*c),   n = ceil(D / c) + 1   (+1: a clip may start mid-chunk),

with r the measured rate times (1 + margin). A clip cut into a lead-in first (shorter chunks: `video.lead_in_frames`)
needs B >= max over k of (render seconds of chunks 0..k) - (air seconds of chunks 0..k-1), with each shorter
length's own measured render time (a whole chunk's until measured: never less), plus the absolute slack a whole
chunk's plan has (margin x its render time). Until then the timeline plays idle/programme and the render thread
keeps working ahead (the look-ahead may grow to `capacity_s`). A renderer at real time or faster needs no more than
one chunk, which the look-ahead already holds: no added delay. A clip that cannot reach its head start within
`capacity_s` (too long for this renderer), or whose buffer stopped growing for `capacity_s` of timeline, starts
anyway and is logged as over the floor. A buffer that grows, however slowly, keeps the clip waiting.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

from flashtalk_live.log import get_logger
from flashtalk_live.settings import RendererSettings, VideoSettings


MAX_RAMP_CHUNKS = 6  # the longest ramp `Admission.ramp()` tries (besides the lengths as listed)


def ramps(lengths: tuple[int, ...] | list[int], max_chunks: int = MAX_RAMP_CHUNKS) -> list[tuple[int, ...]]:
    """Every non-falling sequence of the distinct lengths, 1..max_chunks long: the ramps a lead-in may cut."""
    distinct = sorted(set(lengths))
    return [r for k in range(1, max_chunks + 1) for r in itertools.combinations_with_replacement(distinct, k)]


class RenderRate:
    """Render seconds per media second: an EWMA that rises fast (a hiccup counts at once) and falls slowly."""

    def __init__(self, rise: float = 0.5, fall: float = 0.1) -> None:
        self.rise, self.fall = rise, fall
        self.value: float | None = None  # None until the first measured chunk
        self.last: float | None = None
        self.samples = 0
        self.short: dict[int, float] = {}  # render seconds of shorter chunks (a lead-in) by frames, same EWMA

    def restart(self, value: float | None) -> None:
        """Another renderer took over: its own speed (or nothing known yet), not a blend with the last one's."""
        self.value = value
        self.short = {}

    def _follow(self, old: float | None, x: float) -> float:
        """The EWMA step: rise fast towards a slower sample, fall slowly towards a faster one."""
        return x if old is None else old + (self.rise if x > old else self.fall) * (x - old)

    def observe_short(self, frames: int, render_s: float) -> None:
        """A chunk shorter than a whole one: a fixed cost per chunk makes its rate worse, so it is kept apart."""
        self.short[frames] = self._follow(self.short.get(frames), render_s)

    def observe(self, render_s: float, media_s: float) -> None:
        if media_s <= 0:
            return
        x = render_s / media_s
        self.last = x
        self.samples += 1
        self.value = self._follow(self.value, x)


@dataclass(frozen=True)
class Decision:
    admit: bool
    reason: str  # "ready", "no_measurement", "over_floor", "buffer_stalled", or "building_head_start"
    head_start_s: float  # what this clip needs buffered ahead of the air
    buffered_s: float


class Admission:
    """`may_start(segment_id, clip_s, frame)` for the timeline; `target_chunks()` sizes the look-ahead."""

    def __init__(self, *, chunk_s: float, fps: int, base_chunks: int, capacity_s: float, margin: float,
                 buffered_s: Callable[[], float], rate: RenderRate | None = None,
                 lead_in: tuple[int, ...] = ()) -> None:
        """lead_in: the lengths a lead-in may cut (video.lead_in_frames), ordered into a ramp by `ramp()`."""
        self.chunk_s, self.fps = chunk_s, fps
        self.lead_in = tuple(lead_in)
        self._ramp_memo: tuple[tuple, tuple[int, ...]] | None = None
        self.chunk_frames = round(chunk_s * fps)
        self.base_chunks = base_chunks
        self.capacity_s = max(capacity_s, base_chunks * chunk_s)
        self.margin = margin
        self.buffered_s = buffered_s
        self.rate = rate or RenderRate()
        self._waiting: str | None = None
        self._waiting_since: int = 0  # timeline frame of the waiting clip's last new buffer peak
        self._peak_b = 0.0
        self._want_s = 0.0
        self.last: Decision | None = None
        self.over_floor = 0  # clips started without their full head start
        self.refusals = 0  # chunks cut while a clip waited for its head start
        self._log = get_logger("admission")

    @classmethod
    def from_settings(cls, r: RendererSettings, v: VideoSettings, buffered_s: Callable[[], float]) -> "Admission":
        return cls(chunk_s=v.chunk_frames / v.fps, fps=v.fps, base_chunks=r.lookahead_chunks,
                   capacity_s=r.lookahead_s, margin=r.admission_margin, buffered_s=buffered_s,
                   lead_in=tuple(v.lead_in_frames))

    @property
    def planning_rate(self) -> float | None:
        v = self.rate.value
        return None if v is None else v * (1.0 + self.margin)

    def observe(self, render_s: float, frames: int) -> None:
        """A rendered chunk of `frames` frames took render_s: whole chunks make the rate, shorter ones their own."""
        if frames == self.chunk_frames:
            self.rate.observe(render_s, frames / self.fps)
        elif frames > 0:
            self.rate.observe_short(frames, render_s)

    def chunk_render_s(self, frames: int) -> float | None:
        """Planning seconds to render a chunk of `frames` frames (None: no measurement yet). A shorter chunk not
        measured yet counts as a whole one, which never renders faster."""
        r = self.planning_rate
        if r is None:
            return None
        whole = r * self.chunk_s
        if frames >= self.chunk_frames:
            return r * frames / self.fps
        short = self.rate.short.get(frames)
        return whole if short is None else min(whole, short * (1.0 + self.margin))

    def head_start_s(self, clip_s: float, lead: tuple[int, ...] = ()) -> float:
        """Seconds that must be buffered ahead of the air for a clip of clip_s seconds to air without a stall;
        `lead`: the clip starts on a chunk's first frame and is cut into chunks of these many frames first."""
        r = self.planning_rate
        if r is None:
            return 0.0
        c = self.chunk_s
        if not lead:
            n = math.ceil(max(clip_s, 0.0) / c) + 1
            return max(r * c, n * r * c - (n - 1) * c)
        # The absolute slack a whole chunk's plan has (margin x its render): the first chunks of a clip or a re-plan
        # also pay what scales with no chunk (the in-flight render's stop, the clip's captions rasterised beside
        # the render), which the margin on a short chunk's time alone left uncovered (CPU runs held 2-4 frames).
        slack = self.margin * (self.rate.value or 0.0) * c
        need = ready = aired = 0.0
        left = max(clip_s, 0.0)
        for frames in lead:
            ready += self.chunk_render_s(frames) or 0.0
            need = max(need, ready - aired)
            aired += frames / self.fps
            left -= frames / self.fps
        if left > 0:  # then whole chunks: the first of them or the last decides (rate below or above 1)
            n = math.ceil(left / c - 1e-9)
            need = max(need, ready + r * c - aired, ready + n * r * c - aired - (n - 1) * c)
        return need + slack

    def first_chunks_s(self, lead: tuple[int, ...]) -> float | None:
        """The head start a re-plan's first chunks need: one whole chunk's render, or with a lead-in its ramp and
        the whole chunk after it, each rendered in the air time of those before (None: no measurement yet)."""
        if self.planning_rate is None:
            return None
        if not lead:
            return self.chunk_render_s(self.chunk_frames)
        return self.head_start_s(sum(lead) / self.fps + self.chunk_s, tuple(lead))

    def ramp(self) -> tuple[int, ...]:
        """The lead-in's chunk lengths in the order a clip or a re-plan cuts them: of every non-falling ramp of the
        lead-in's lengths (a length may repeat), the one whose first chunks plan the shortest head start
        (`first_chunks_s`), then the fewest chunks, or none (whole chunks) where no ramp plans shorter than those;
        the lengths as listed until each has a measured time. A chunk's
        fixed cost can make the next length up render in more than the air of the one before, which a repeated
        length avoids (on an H100 at realtime, [16, 20] measured gives [20, 20, 20, 20]: docs/broadcast.md)."""
        lead = self.lead_in
        short = dict(self.rate.short)  # one snapshot: the render thread adds lengths while an ingest thread asks
        if not lead or self.planning_rate is None or any(n not in short for n in lead):
            return lead
        key = (self.rate.value, tuple(sorted((n, v) for n, v in short.items() if n in lead)))
        if self._ramp_memo is None or self._ramp_memo[0] != key:
            best = min([(), lead] + ramps(lead), key=lambda r: (round(self.first_chunks_s(r) or 0.0, 2), len(r)))
            self._ramp_memo = (key, best)
        return self._ramp_memo[1]

    def live_chunk_frames(self) -> int | None:
        """The chunk length a streamed clip whose producer is not ahead of the air is cut into (None: whole chunks).

        Such a chunk cannot start before its last audio arrived, so a stream airs no sooner than its longest chunk's
        air plus that chunk's render after its first byte (whole chunks on an H100 at realtime: 1.12 + 0.78 s). Of
        the lead-in's measured lengths, the one with the least air plus planned render among those that render
        within their own air (a producer at real time is kept up with, chunk after chunk); None where none does or
        none beats a whole chunk."""
        r = self.planning_rate
        if r is None:
            return None
        best: tuple[float, int] | None = None
        for n in sorted(set(self.lead_in)):
            render = self.chunk_render_s(n) if n in self.rate.short else None
            if render is None or render > n / self.fps:
                continue
            if best is None or n / self.fps + render < best[0]:
                best = (n / self.fps + render, n)
        if best is None or best[0] >= self.chunk_s * (1.0 + r):
            return None
        return best[1]

    def lead_in_gain_s(self, lead: tuple[int, ...]) -> float:
        """How much sooner a clip airs cut into `lead` than into whole chunks (0.0 when not known)."""
        whole, ramp = self.chunk_render_s(self.chunk_frames), self.first_chunks_s(lead)
        return 0.0 if whole is None or ramp is None else max(0.0, whole - ramp)

    def may_start(self, segment_id: str, clip_s: float, frame: int, lead: tuple[int, ...] = ()) -> bool:
        b = self.buffered_s()
        need = self.head_start_s(clip_s, lead)
        if self.rate.value is None:
            d = Decision(True, "no_measurement", need, b)
        elif b >= need:
            d = Decision(True, "ready", need, b)
        elif b >= self.capacity_s - self.chunk_s:
            d = Decision(True, "over_floor", need, b)
        else:
            if self._waiting != segment_id:
                self._waiting, self._waiting_since, self._peak_b = segment_id, frame, b
            if b > self._peak_b + 0.5 / self.fps:  # still growing (however slowly, e.g. on a loaded box): keep waiting
                self._waiting_since, self._peak_b = frame, b
            if (frame - self._waiting_since) / self.fps >= self.capacity_s:
                d = Decision(True, "buffer_stalled", need, b)
            else:
                d = Decision(False, "building_head_start", need, b)
        self.last = d
        if d.admit:
            if d.reason in ("over_floor", "buffer_stalled"):
                self.over_floor += 1
                self._log.warning("clip_over_floor", segment_id=segment_id, reason=d.reason, clip_s=round(clip_s, 2),
                                  head_start_s=round(need, 2), buffered_s=round(b, 2),
                                  render_rate=round(self.rate.value or 0.0, 3))
            self._waiting, self._want_s = None, 0.0
        else:
            self.refusals += 1
            self._want_s = min(need, self.capacity_s)
        return d.admit

    def nothing_waits(self) -> None:
        """The timeline found nothing to start (the queue empty, no programme clip held): a clip that waited for its
        head start left the queue, so nothing holds the look-ahead above its base or shows as waiting."""
        if self._waiting is not None:
            self._waiting, self._want_s = None, 0.0
            if self.last is not None and not self.last.admit:
                self.last = None

    def target_chunks(self) -> int:
        """How many chunks the look-ahead may hold now: the base, or enough for the head start a clip waits for."""
        if self._waiting is None:
            return self.base_chunks
        return max(self.base_chunks, math.ceil(self._want_s / self.chunk_s) + 1)

    def status(self) -> dict[str, Any]:
        d = self.last
        return {
            "render_rate": None if self.rate.value is None else round(self.rate.value, 3),
            # render seconds of the shorter chunks by frames (a clip's lead-in), kept apart from the rate
            "short_chunk_render_s": {str(n): round(v, 4) for n, v in sorted(self.rate.short.items())},
            "lead_in_ramp": list(self.ramp()),  # the chunk lengths a clip into an idle room starts with now
            "live_chunk_frames": self.live_chunk_frames(),  # a stream whose producer is not ahead (None: whole)
            "buffered_s": round(self.buffered_s(), 3),
            "waiting": self._waiting,
            "waiting_reason": d.reason if d is not None and not d.admit else None,
            "head_start_s": round(d.head_start_s, 3) if d is not None else 0.0,
            "capacity_s": self.capacity_s,
            "clips_over_floor": self.over_floor,
            "waiting_chunks_total": self.refusals,
        }
