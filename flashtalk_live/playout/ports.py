"""The ports of playout: what it needs from the parts around it (the spool, the admission gate, the renderers, the
air), declared once as Protocols so that each part is typed against an interface, never reached with `getattr`.

The spool (`queue/spool.py`) is the production `ClipQueue`; tests use an in-memory one (`tests/support/
queue_fakes.py`). The renderer supervisor (`renderers/supervisor.py`) is the `ChunkRenderer`; the pacer
(`playout/pacing.py`) is the `AirClock`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import numpy as np

from flashtalk_live.chunks import RenderChunk, RenderedChunk


class QueuedClip(Protocol):
    """One clip of the queue as playout sees it (the spool's `Entry`)."""

    @property
    def segment_id(self) -> str: ...

    @property
    def duration_s(self) -> float: ...

    @property
    def mode(self) -> str: ...  # "enqueue" | "insert" | "play_now"


class DecodedClip(Protocol):
    """A clip's audio (`audio.ClipAudio`): broadcast float32 [n, channels], model float32 mono 16 kHz."""

    @property
    def broadcast(self) -> np.ndarray: ...

    @property
    def model(self) -> np.ndarray: ...


class ClipQueue(Protocol):
    """The durable queue as the timeline cuts it: take the head when it starts on air, undo a take or a requeue
    when a re-plan rewinds the future, requeue a clip that play_now cut."""

    def peek(self) -> QueuedClip | None: ...

    def take_next(self) -> QueuedClip | None: ...

    def load_audio(self, entry: Any) -> DecodedClip: ...  # an entry this queue handed out

    def interrupt_pending(self) -> bool: ...

    def is_cancel_requested(self, segment_id: str) -> bool: ...

    def mark_interrupted(self, segment_id: str) -> bool | None: ...

    def requeue(self, segment_id: str) -> bool: ...

    def untake(self, segment_id: str) -> bool: ...

    def unrequeue(self, segment_id: str) -> bool: ...


class LiveAudio(Protocol):
    """A streamed clip's growing audio (`queue/streams.LiveStream`): what arrived so far, whether it ended."""

    available: int
    ended: bool
    cut: str | None  # why it ended without its producer's close
    declared_s: float | None
    rate: int
    first_byte: float | None  # monotonic time its first piece was acknowledged

    @property
    def seconds(self) -> float: ...

    def broadcast(self, pos: int, n: int) -> np.ndarray: ...

    def model(self, pos: int, n: int) -> np.ndarray: ...

    def startable(self, min_samples: int) -> bool: ...

    def wait(self, timeout: float) -> None: ...


class LiveStreams(Protocol):
    """The open streamed clips as the timeline sees them (`queue/streams.StreamRegistry`)."""


    def live(self, segment_id: str) -> LiveAudio | None: ...

    def start_s(self, live: LiveAudio, first_s: float, gain_s: float, live_s: float | None = None) -> float: ...

    # set by the timeline: the first chunk a clip picked now is cut into, how much sooner a lead-in airs, and the
    # chunk a stream whose producer is not ahead is cut into (None: whole chunks)
    first_chunk_s: Callable[[], float]
    lead_gain_s: Callable[[], float]
    live_chunk_s: Callable[[], float | None]


class Gate(Protocol):
    """What the timeline needs from the admission policy (`playout/admission.py`)."""

    lead_in: tuple[int, ...]  # the lead-in lengths it orders into `ramp()` (video.lead_in_frames)

    def ramp(self) -> tuple[int, ...]: ...

    def may_start(self, segment_id: str, clip_s: float, frame: int, lead: tuple[int, ...] = ()) -> bool: ...

    def lead_in_gain_s(self, lead: tuple[int, ...]) -> float: ...

    def live_chunk_frames(self) -> int | None: ...


class ChunkSource(Protocol):
    """Where the render thread gets the next chunk to render: the timeline, or the replanner over it. `plan` counts
    re-plans; `rebase_point` is (plan, the chunk the re-cut future follows on air) of the newest re-plan."""

    plan: int
    rebase_point: tuple[int, RenderedChunk | None]

    def next_chunk(self) -> RenderChunk: ...

    def render_begins(self, chunk: RenderChunk) -> None:
        """The render thread starts drawing a chunk that was not cut here (an idle-bank link): a re-plan meanwhile
        counts it as the render in flight, and abandons it (spare work) to render the new plan sooner."""

    def abandoned(self) -> None:
        """The renderer stopped the chunk in flight early (RenderAbandoned): nothing is in flight any more."""


class ChunkRenderer(Protocol):
    """The renderers as playout sees them (`renderers/supervisor.py`): render one chunk with whichever renderer is
    on duty, say which that is, how fast a renderer that just took over is expected to be, and how soon it stops
    a chunk a re-plan abandons; `served` is told when a chunk of a renderer's earlier frames (the idle bank) goes
    out instead of a render; `reason_of` says why a renderer was put on duty (for the air's `renderer_changed`)."""

    def render(self, chunk: RenderChunk) -> RenderedChunk: ...

    def served(self, name: str) -> None: ...

    def reason_of(self, name: str) -> str: ...

    def abandon_s(self) -> float | None: ...

    def stoppable_share(self) -> float | None: ...

    def current_name(self) -> str: ...

    def expected_rate(self) -> float | None: ...

    def expected_short(self) -> dict[int, float]: ...


class AirClock(Protocol):
    """The air's position (`playout/pacing.py`'s pacer): the output frame on air now, None before the first."""

    @property
    def air_frame(self) -> int | None: ...

    @property
    def buffered_frames(self) -> int: ...
