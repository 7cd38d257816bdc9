"""Playout, assembled: the one place where the parts of `playout/` are built, in dependency order, and linked.

    spool ─▶ Timeline ─▶ Replanner ─▶ RenderAhead ─▶ (renderers) ─▶ Lookahead/FrameStore ─▶ Pacer ─▶ broadcast
                ▲ Admission (gate: head start vs measured render rate, reads the pacer's buffer)
                └ Programme (the playlist when the queue is empty)          OnAir: marks on air ─▶ events, spool

Each part takes only parts built before it (the pacer first, since the gate and the replanner read the air from
it); nothing is patched in afterwards. The render thread calls `step`; the broadcast thread pulls frames from
`pacer` and reports aired frames to `aired`; the control plane edits through `editing` and reads `plan_of` and
`status`.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from flashtalk_live.chunks import Mark, RenderAbandoned, RenderedChunk
from flashtalk_live.events import EventBus
from flashtalk_live.playout.admission import Admission
from flashtalk_live.playout.framestore import FrameStore
from flashtalk_live.playout.idlebank import bank_from_settings, renderer_identity
from flashtalk_live.playout.onair import OnAir, publish_underrun
from flashtalk_live.playout.pacing import Lookahead, Pacer
from flashtalk_live.playout.ports import ChunkRenderer, LiveStreams
from flashtalk_live.playout.programme import Programme
from flashtalk_live.playout.renderahead import RenderAhead
from flashtalk_live.playout.replan import Replanner
from flashtalk_live.playout.timeline import Timeline
from flashtalk_live.queue.spool import Spool
from flashtalk_live.settings import Settings


class Playout:
    """What airs and when, for one room."""

    def __init__(self, settings: Settings, spool: Spool, events: EventBus, renderers: ChunkRenderer, *,
                 preferred_renderer: Callable[[], Any], media_time_s: Callable[[], float],
                 prepare: Callable[[RenderedChunk], None] = lambda rendered: None,
                 streams: LiveStreams | None = None) -> None:
        """renderers: the supervisor (renders with whichever renderer is on duty); preferred_renderer: the renderer
        the idle bank is drawn by; media_time_s: seconds encoded so far; prepare: called with each rendered chunk
        before it is handed to the air (the compositor rasterises its captions); streams: the open streamed clips
        (queue/streams.py), cut as their audio arrives."""
        s, v = settings, settings.video
        self.fps = v.fps
        self.prepare = prepare
        self.programme = Programme.load(s.path(s.programme.playlist), s.programme, s.encoder,
                                        max_clip_s=s.ingest.max_clip_seconds) if s.programme.playlist else None
        self.lookahead = Lookahead(s.renderer.lookahead_chunks,
                                   store=FrameStore.from_settings(s.expanded(s.renderer), s.storage))
        self.pacer = Pacer(self.lookahead, v.fps, s.samples_per_frame, s.encoder.audio_channels,
                           on_underrun=partial(publish_underrun, events))
        # Render ahead (issue 10): a queue clip starts only with enough head start buffered.
        self.admission = Admission.from_settings(s.renderer, v, self._buffered_s)
        self.timeline = Timeline(v, s.encoder, spool, self.programme, admission=self.admission, replannable=True,
                                 streams=streams, programme_resume_s=s.programme.resume_after_queue_s)
        # Edits act on air time: the render thread cuts through the replanner, control commands re-plan through it.
        self.replanner = Replanner(self.timeline, self.lookahead, fps=v.fps, rate=self._planning_rate,
                                   render_s=self.admission.chunk_render_s,
                                   first_chunks_s=lambda: self.admission.first_chunks_s(self.admission.ramp()),
                                   abandon_s=renderers.abandon_s, stoppable_share=renderers.stoppable_share,
                                   render_margin=self.admission.margin,
                                   air_frame=self._air_frame, buffered_s=self._buffered_s,
                                   due_margin_s=s.streams.due_margin_s,
                                   within_chunk=s.renderer.replan_within_chunk,
                                   min_kept_frames=RenderAhead.MOTION_FRAMES)
        self.render_ahead = RenderAhead(self.replanner, renderers.render, renderers.current_name, self.admission,
                                        self.lookahead, fps=v.fps, idle_reuse=s.renderer.idle_reuse,
                                        bank=bank_from_settings(s.renderer, v, s.model, s.path(s.state_dir)),
                                        renderer_identity=lambda: renderer_identity(preferred_renderer()),
                                        expected_rate=renderers.expected_rate,
                                        expected_short=renderers.expected_short, served=renderers.served)
        self.onair = OnAir(events, spool, self.timeline, self.replanner, self.admission, fps=v.fps,
                           air_frame=self._air_frame, media_time_s=media_time_s, reason_of=renderers.reason_of)

    # -- what the parts read of each other (the pacer is built first) --------------------------------
    def _buffered_s(self) -> float:
        return self.pacer.buffered_frames / self.fps

    def _planning_rate(self) -> float | None:
        return self.admission.planning_rate

    def _air_frame(self) -> int | None:
        return self.pacer.air_frame

    # -- the render thread ------------------------------------------------------------------------
    def step(self, stop: threading.Event) -> RenderedChunk | None:
        """Cut and render the next chunk and hand it to the air (blocks while the buffer is full); a chunk that a
        re-plan discarded meanwhile is dropped (None: its renderer stopped it early). Raises LookaheadClosed once
        the room stops."""
        try:
            rendered = self.render_ahead.step()
        except RenderAbandoned:
            self.replanner.abandoned()
            return None
        ready = time.monotonic()
        self.prepare(rendered)
        if self.replanner.put(rendered, stop):  # False: a re-plan discarded it
            self.onair.chunk_ready(rendered.chunk, ready)
            self.onair.publish_plan()
        return rendered

    def set_avatar(self, image: np.ndarray, prompt: str) -> None:
        """At a chunk boundary on the render thread: no old-avatar idle airs after it."""
        self.render_ahead.set_avatar(image, prompt)

    # -- the broadcast thread ---------------------------------------------------------------------
    def aired(self, marks: Sequence[Mark], segment_id: str | None, out_frame: int,
              renderer: str | None = None) -> None:
        self.onair.aired(marks, segment_id, out_frame, renderer)

    # -- the control plane -------------------------------------------------------------------------
    def editing(self, command: str, segment_id: str | None = None) -> AbstractContextManager[None]:
        return self.replanner.editing(command, segment_id)

    def plan_of(self, segment_id: str) -> dict[str, Any] | None:
        return self.onair.plan_of(segment_id)

    @property
    def on_air(self) -> str | None:
        """The queue clip on air now (its segment id), or None."""
        return self.onair.segment

    def status(self) -> dict[str, Any]:
        """The `plan` part of `status`: the clips planned on air and the render-ahead state."""
        clips, media = self.onair.planned()
        ra = self.render_ahead.status()
        return {"media_time_s": round(media, 3), "buffered_s": ra["buffered_s"], "render_rate": ra["render_rate"],
                "head_start_s": ra["head_start_s"], "waiting": ra["waiting"], "waiting_reason": ra["waiting_reason"],
                "clips": clips, **self.replanner.status()}

    def render_ahead_status(self) -> dict[str, Any]:
        return {**self.render_ahead.status(), **self.lookahead.store.stats()}

    # -- life cycle --------------------------------------------------------------------------------
    def settle(self) -> None:
        """Commit finished clips' removal that failed before (housekeeping, the end of the broadcast)."""
        self.onair.settle()

    def stop(self) -> None:
        """Stop handing frames to the air once what is buffered has aired (SIGTERM)."""
        self.pacer.stop(drain=True)

    def close(self) -> None:
        """After the render thread ended: wake anything blocked on the buffer."""
        self.lookahead.close()

    def close_store(self) -> None:
        """After the render thread: no chunk is packed any more."""
        self.lookahead.store.close()
