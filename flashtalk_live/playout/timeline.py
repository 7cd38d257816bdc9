"""The audio-clocked timeline: cut queue clips, the programme and idle silence into fixed-size RenderChunks.

Audio is the master clock. Global broadcast sample n airs at n / audio_rate s and video frame k at k / fps s; a chunk
always holds exactly chunk_frames * samples_per_frame broadcast samples, and the 16 kHz model audio for the same
instants (model sample j <-> broadcast sample j * audio_rate / 16000, floored at every chunk edge so the totals stay
exact forever).

Priorities, decided at every clip boundary: the queue first, then the programme, then idle silence.
* A queue clip waiting while the programme plays takes over when the current programme clip ends (or at once during
  a programme pause, or while idle). The programme then resumes with its next clip: where it left off; with
  `programme_resume_s` only once that long has passed since the queue clip ended (idle until then), so a reply
  that follows at once does not wait behind a programme clip.
* play_now (`queue.interrupt_pending()`) is checked at every chunk boundary: whatever is playing is cut there
  ('interrupted' mark; `queue.mark_interrupted` for a queue clip) and the new clip starts on the chunk's first frame.
  The same flag covers a cancelled playing clip (spool.is_cancel_requested): it stops being cut there too. The air
  side of a cancel (silencing what is already rendered, the 'interrupted' as aired) is media/pacing.Lookahead.cut.
  A programme clip that was cut is played again from its start when the programme resumes (resuming a sales pitch
  mid-sentence sounds broken).
* Marks: 'started' on the frame holding a clip's first sample, 'finished' on the frame holding its last sample.
* Re-planning (playout/replan.py): every chunk cut keeps a snapshot of the state before it and the spool
  operations made while cutting it (take, requeue, programme pick), so `rewind(frame)` can undo the future that is
  buffered but not on air: taken clips go back to the queue's head, requeued ones back on air, and cutting goes on
  from `frame` with the state of that moment. A play_now cut puts the cut queue clip back in the queue, right after
  the waiting play_now clips, to replay from its start (`queue.requeue`; the 'interrupted' mark says `requeued`).
* Streamed clips (queue/streams.py): a queue clip whose audio still arrives is cut from its `LiveStream` as it
  grows. It may start once it holds its first chunk plus `prebuffer_s` (or has ended), and passes the same admission
  with the producer's declared duration (else what arrived). When a chunk of it is cut before its audio is all
  there (`Replanner` waits for the audio until the air needs the chunk), the rest of the chunk is a pause inside the
  clip (its frames belong to the clip, silent), counted in `starved_samples` (the producer's lateness, not an
  underrun of ours); the clip then goes on where its audio left off. A stream cut by its idle timeout ends with an
  'interrupted' mark (reason `stream_timeout`) instead of 'finished'.
* Admission (optional, playout/admission.py): a queue clip is taken from the spool only once the gate says the
  rest of it can be rendered before it is needed on air; until then the programme or idle goes on. This holds for
  play_now too: its cut waits for the same admission, and for programme clips (idle until the gate opens).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from flashtalk_live.log import get_logger
from flashtalk_live.settings import EncoderSettings, VideoSettings
from flashtalk_live.chunks import MODEL_AUDIO_RATE, Mark, RenderChunk, RenderedChunk
from flashtalk_live.playout.ports import ClipQueue, Gate, LiveAudio, LiveStreams

Source = Literal["queue", "programme"]

# What a re-plan keeps of the buffered future (playout/replan.py): nothing, the clip on air, or queue clips too.
Keep = Literal["nothing", "on_air", "queue"]


@dataclass
class _Snapshot:
    """The timeline just before it cut one chunk, and what cutting that chunk did to the spool and programme."""

    start_frame: int
    cur: "_Playing | None"
    chunk_index: int
    sample: int
    history: np.ndarray
    ops: list[tuple[str, Any]] = field(default_factory=list)  # ("take"|"requeue", segment_id) | ("programme", item)
    segments: frozenset = frozenset()  # what the chunk holds (segment ids, None for idle/pause frames)
    queue_only: bool = False  # every frame belongs to a queue clip (no idle, pause or programme frame)
    holds_queue: bool = False  # some frame belongs to a queue clip
    started: tuple[str, ...] = ()  # queue clips whose first frame is in this chunk
    starved: int = 0  # broadcast samples of producer pauses cut into this chunk
    queue_end: int | None = None  # the timeline's `_queue_end` before the chunk
    programme: Any = None  # the programme's checkpoint before the chunk (Programme.checkpoint), None: none taken


@dataclass
class Split:
    """The timeline re-cut up to `frame` inside a held chunk (`Timeline.split_at`): `chunk` holds what that chunk's
    first frames hold when cut again, `snap` its snapshot; the rest is the state at `frame`."""

    frame: int
    chunk: RenderChunk
    snap: _Snapshot
    cur: "_Playing | None"
    chunk_index: int
    sample: int
    history: np.ndarray
    starved: int
    queue_end: int | None = None


@dataclass
class _Playing:
    """A clip or a programme pause being cut into chunks."""

    kind: Literal["clip", "pause"]
    source: Source
    segment_id: str | None
    n: int  # broadcast samples in total
    broadcast: np.ndarray | None = None  # [n, channels]; None for a pause
    model: np.ndarray | None = None  # [m] 16 kHz
    pos: int = 0  # broadcast samples already cut
    start_sample: int = 0  # global broadcast sample of the first sample
    started: bool = False
    programme_item: Any = None  # for Programme.rewind after a play_now cut
    stream: LiveAudio | None = None  # a streamed clip: its audio so far (n unused)
    gap: int = 0  # broadcast samples of producer pauses cut into it so far

    @property
    def remaining(self) -> int:
        """Samples ready to cut (a stream: received so far)."""
        return (self.stream.available if self.stream is not None else self.n) - self.pos

    @property
    def complete(self) -> bool:
        """Nothing more will come: all of it is cut once remaining is 0."""
        return self.stream is None or self.stream.ended


def _as_broadcast(a: Any, channels: int, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{what}: broadcast audio must be [samples, channels], got shape {arr.shape}")
    if arr.shape[1] == channels:
        return arr
    if arr.shape[1] == 1:
        return np.repeat(arr, channels, axis=1)
    if channels == 1:
        return arr.mean(axis=1, keepdims=True)
    raise ValueError(f"{what}: {arr.shape[1]} audio channels cannot be mapped to {channels}")


def _as_model(a: Any, what: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr.mean(axis=1)
    if arr.ndim != 1:
        raise ValueError(f"{what}: model audio must be mono [samples], got shape {arr.shape}")
    return arr


class Timeline:
    """`next_chunk()` returns the next RenderChunk; call it from one thread (the renderer's)."""

    def __init__(
        self,
        video: VideoSettings,
        encoder: EncoderSettings,
        queue: ClipQueue | None,
        programme: Any | None = None,
        *,
        history_seconds: float = 8.0,
        admission: Gate | None = None,
        replannable: bool = False,
        streams: LiveStreams | None = None,
        programme_resume_s: float = 0.0,
    ) -> None:
        # A ChunkSource (playout/ports.py) of one plan; the Replanner over it counts re-plans.
        self.plan = 0
        self.rebase_point: tuple[int, RenderedChunk | None] = (0, None)
        self.fps: int = video.fps
        self.chunk_frames: int = video.chunk_frames
        self.rate: int = encoder.audio_rate
        self.channels: int = encoder.audio_channels
        if self.rate % self.fps:
            raise ValueError(f"audio_rate {self.rate} is not a whole number of samples per frame at {self.fps} fps")
        self.spf = self.rate // self.fps
        self.queue = queue
        self.programme = programme
        self.admission = admission
        self.streams = streams
        self.starved_samples = 0  # producer pauses cut inside streamed clips (re-plans give back what they undo)
        self.history_len = int(round(history_seconds * MODEL_AUDIO_RATE))
        self._history = np.zeros(self.history_len, np.float32)
        self._cur: _Playing | None = None
        self._chunk_index = 0
        self._sample = 0  # global broadcast samples cut so far
        self._snaps: list[_Snapshot] = []  # one per chunk cut and not known to be on air (oldest first)
        self.replannable = replannable  # keep snapshots for playout/replan.py's Replanner (it also forgets them)
        self._ops: list[tuple[str, Any]] = []  # the current chunk's operations
        self._held_item: Any = None  # a programme clip picked but waiting for the render-ahead gate
        self._queue_refused = False  # the last pick found a queue clip waiting for its head start
        # The programme resumes only this many samples after a queue clip ended (`_queue_end`: its last sample + 1).
        self.programme_resume = int(round(programme_resume_s * self.rate))
        self._queue_end: int | None = None
        self._cut_ids: set[str] = set()  # clips cancelled on air (cut()): cut wherever cutting reaches them
        # The lead-in (`video.lead_in_frames`): shorter chunks that render and air sooner. A ramp of them starts
        # where a queue clip starts on a whole chunk's first frame (that chunk shrinks) and at every re-plan, and
        # runs to its end whatever plays: each of its chunks was planned to render in the air time of the one
        # before (the admission's head start, the replanner's first chunks), which a whole chunk would not. The
        # admission orders the lengths into the ramp (`_lead`).
        self.lead_in: tuple[int, ...] = tuple(video.lead_in_frames)
        self._ramp: tuple[int, ...] = ()  # the lengths of the next chunks to cut, then whole chunks
        self._offer: tuple[int, ...] = ()  # the chunk lengths a queue clip picked now would be cut into
        if streams is not None:  # a stream is worth a re-plan once it could start in the chunk cut for it
            streams.first_chunk_s = lambda: self.first_chunk_frames() / self.fps
            streams.lead_gain_s = lambda: self.admission.lead_in_gain_s(self._lead()) if self.admission else 0.0
            streams.live_chunk_s = lambda: None if (n := self.live_chunk_frames()) is None else n / self.fps
        self._log = get_logger("timeline")

    def _lead(self) -> tuple[int, ...]:
        """The lead-in's ramp now: the admission's choice from the measured times where it plans this lead-in
        (`Admission.ramp`, the one the replanner's first chunks and a stream's start are planned with), else the
        lengths as listed."""
        a = self._lead_gate()
        return a.ramp() if a is not None else self.lead_in

    def _lead_gate(self) -> Gate | None:
        """The admission where it plans this timeline's lead-in (its lengths measured and ordered there), else None."""
        a = self.admission
        return a if self.lead_in and a is not None and getattr(a, "lead_in", ()) == self.lead_in else None

    def live_chunk_frames(self) -> int | None:
        """The chunk a streamed clip whose producer is not ahead is cut into (`Admission.live_chunk_frames`, of the
        lead-in's lengths: compiled and measured), or None: whole chunks."""
        a = self._lead_gate()
        return a.live_chunk_frames() if a is not None else None

    def _live_frames(self, cur: "_Playing | None") -> int | None:
        """live_chunk_frames where `cur` is a stream holding less than a whole chunk (its producer not ahead: a
        whole chunk would wait for its audio), else None."""
        if cur is None or cur.stream is None or cur.complete or cur.remaining >= self.chunk_frames * self.spf:
            return None
        return self.live_chunk_frames()

    def first_chunk_frames(self) -> int:
        """The first chunk a clip picked after a re-plan is cut into: the lead-in ramp's first length, else a whole
        chunk (queue/streams.py: when a stream holds enough audio to be worth a re-plan)."""
        lead = self._lead()
        return lead[0] if lead else self.chunk_frames

    # -- clock helpers ---------------------------------------------------------------------------
    def _m(self, sample: int) -> int:
        """Global model-audio index for a global broadcast sample (floored)."""
        return sample * MODEL_AUDIO_RATE // self.rate

    @property
    def frame(self) -> int:
        """Frames cut so far (the next chunk's start_frame)."""
        return self._sample // self.spf

    @property
    def state(self) -> str:
        """'queue', 'programme', 'pause' or 'idle': what the last chunk ended on."""
        if self._cur is None:
            return "idle"
        if self._cur.kind == "pause":
            return "pause"
        return self._cur.source

    @property
    def current_segment(self) -> str | None:
        return self._cur.segment_id if self._cur is not None else None

    def model_history(self, seconds: float | None = None) -> np.ndarray:
        """The last `seconds` (default history_seconds) of 16 kHz model audio up to the last chunk's end."""
        if seconds is None:
            return self._history.copy()
        n = int(round(seconds * MODEL_AUDIO_RATE))
        if n <= self.history_len:
            return self._history[self.history_len - n :].copy()
        return np.concatenate([np.zeros(n - self.history_len, np.float32), self._history])

    # -- choosing what plays next ----------------------------------------------------------------
    def _start_queue_entry(self, entry: Any, frame: int, marks: list[Mark]) -> _Playing | None:
        seg = entry.segment_id
        live = self.streams.live(seg) if self.streams is not None else None
        if live is not None:
            return _Playing("clip", "queue", seg, 0, stream=live)
        assert self.queue is not None  # entry came from it
        try:
            clip = self.queue.load_audio(entry)
            broadcast = _as_broadcast(clip.broadcast, self.channels, seg)
            model = _as_model(clip.model, seg)
        except Exception as e:  # noqa: BLE001 - one bad clip must not stop the room
            # The client learns the clip will never air; the spool stops tracking it.
            self._log.error("queue_clip_unplayable", segment_id=seg, error=repr(e))
            marks.append(Mark(frame, "interrupted", seg, "queue"))
            self._queue_interrupted(seg)
            return None
        return _Playing("clip", "queue", seg, broadcast.shape[0], broadcast, model)

    def _queue_interrupted(self, seg: str) -> None:
        if self.queue is None:
            return
        try:
            self.queue.mark_interrupted(seg)
        except Exception as e:  # noqa: BLE001
            self._log.error("queue_mark_interrupted_failed", segment_id=seg, error=repr(e))

    def _programme_admitted(self, item: Any, frame: int) -> bool:
        """A programme clip passes the same render-ahead gate as a queue clip, so it never stutters on air."""
        if self.admission is None:
            return True
        try:
            seconds = len(item.audio.broadcast) / self.rate
            return bool(self.admission.may_start(f"programme:{item.name}", seconds, frame))
        except Exception as e:  # noqa: BLE001 - a failing gate must not stop the programme
            self._log.error("admission_failed", error=repr(e))
            return True

    def _admitted(self, frame: int) -> bool:
        """True when the queue's head clip may start now: a stream once it holds its head (first chunk and jitter
        allowance), and the gate (if any) lets it."""
        if (self.admission is None and self.streams is None) or self.queue is None:
            return True
        try:
            head = self.queue.peek()
            if head is None:
                return True
            clip_s = float(head.duration_s)
            streams = self.streams
            live = streams.live(str(head.segment_id)) if streams is not None else None
            if streams is not None and live is not None:
                first_s = (self._offer[0] if self._offer else self.chunk_frames) / self.fps
                gain = self.admission.lead_in_gain_s(self._offer) if self._offer and self.admission else 0.0
                live_n = self.live_chunk_frames() if self._offer else None
                start = streams.start_s(live, first_s, gain, None if live_n is None else live_n / self.fps)
                if not live.startable(int(round(start * self.rate))):
                    return False  # its first chunk and the producer's jitter allowance have not arrived
                clip_s = max(clip_s, live.declared_s or 0.0) if not live.ended else clip_s
            if self.admission is None:
                return True
            return bool(self.admission.may_start(str(head.segment_id), clip_s, frame, lead=self._offer))
        except Exception as e:  # noqa: BLE001 - a broken gate must not keep clips off the air
            self._log.error("admission_failed", error=repr(e))
            return True

    def _next_from_queue(self, frame: int, marks: list[Mark]) -> _Playing | None:
        if self.queue is None:
            return None
        # Bounded: a spool full of broken clips is drained a few at a time, not in one endless loop.
        self._queue_refused = False
        for _ in range(16):
            if not self._admitted(frame):
                self._queue_refused = True
                return None
            try:
                entry = self.queue.take_next()
            except Exception as e:  # noqa: BLE001
                self._log.error("queue_take_failed", error=repr(e))
                return None
            if entry is None:
                if self._held_item is None and self.admission is not None:
                    # The queue is empty and no programme clip is held: nothing waits for its head start any more
                    # (a waiting clip was cancelled or cleared), so the look-ahead goes back to its base size.
                    nothing_waits = getattr(self.admission, "nothing_waits", None)
                    if nothing_waits is not None:
                        nothing_waits()
                return None
            self._ops.append(("take", entry.segment_id))
            playing = self._start_queue_entry(entry, frame, marks)
            if playing is not None:
                return playing
        return None

    def _next_from_programme(self, frame: int) -> _Playing | None:
        if self.programme is None:
            return None
        item, self._held_item = self._held_item, None
        if item is None:
            try:
                item = self.programme.next_item()
            except Exception as e:  # noqa: BLE001 - the programme is best effort; idle silence is always possible
                self._log.error("programme_failed", error=repr(e))
                return None
            if item is None:
                return None
            self._ops.append(("programme", item))
        if item.kind == "clip" and not self._programme_admitted(item, frame):
            self._held_item = item  # picked again at the next chunk; idle meanwhile
            return None
        if item.kind == "pause":
            n = int(round(item.pause_s * self.rate))
            return _Playing("pause", "programme", None, n, programme_item=item)
        try:
            broadcast = _as_broadcast(item.audio.broadcast, self.channels, item.segment_id)
            model = _as_model(item.audio.model, item.segment_id)
        except ValueError as e:
            self._log.error("programme_clip_unplayable", segment_id=item.segment_id, error=str(e))
            return None
        return _Playing("clip", "programme", item.segment_id, broadcast.shape[0], broadcast, model, programme_item=item)

    def _pick(self, frame: int, marks: list[Mark]) -> _Playing | None:
        nxt = self._next_from_queue(frame, marks)
        if nxt is None and self._queue_refused:
            # A queue clip builds its head start: idle (free from the bank) until it may start. Programme speech
            # now would spend the render time it waits for, and a short programme item passes the gate before a
            # long queue clip does, over and over: the clip was starved for 10 minutes on an H200 (quality).
            return None
        if nxt is None and self.programme_resume and self._queue_end is not None \
                and frame * self.spf - self._queue_end < self.programme_resume:
            return None  # just after a queue clip: idle a moment, a reply that follows starts at once
        return nxt or self._next_from_programme(frame)

    def _cut_current(self, frame: int, marks: list[Mark], *, replay: bool = False) -> None:
        """Cut what is playing at `frame`. replay (play_now): a queue clip goes back to the queue to play again, a
        programme clip plays again from its start when the programme resumes; without it (cancel, skip) the
        programme goes on with its next item.

        A cancelled queue clip stays 'playing' in the spool until its cut airs (the daemon settles it then), so a
        re-plan that rewinds past the cut still finds it cancelled.
        """
        cur = self._cur
        self._cur = None
        if cur is None or cur.kind == "pause":
            return  # a pause simply ends
        if not cur.started:  # picked but never aired: nothing to announce
            return
        seg = cur.segment_id or ""
        requeued = False
        if cur.source == "queue" and replay and self.queue is not None:
            try:
                requeued = bool(self.queue.requeue(seg))
            except Exception as e:  # noqa: BLE001
                self._log.error("queue_requeue_failed", segment_id=seg, error=repr(e))
            if requeued:
                self._ops.append(("requeue", seg))
        marks.append(Mark(frame, "interrupted", seg, cur.source, requeued=requeued))
        self._log.info("clip_interrupted", segment_id=seg, source=cur.source, frame=frame, requeued=requeued)
        if cur.source == "programme" and replay and self.programme is not None and cur.programme_item is not None:
            try:
                self.programme.rewind(cur.programme_item)
            except Exception as e:  # noqa: BLE001
                self._log.error("programme_rewind_failed", error=repr(e))

    def _handle_interrupt(self, frame: int, marks: list[Mark]) -> bool:
        """The spool says the playing clip must be cut: a play_now clip is waiting, or the clip was cancelled.
        True when the play_now clip was asked for and the render-ahead gate refused it (it waits for its head
        start): the chunk is idle from here without asking again (one chunk spent waiting counts once)."""
        q = self.queue
        cur = self._cur
        # The spool's flag also covers a cancelled clip; only cut for it if that clip is the one playing here.
        if q is None:
            return False
        if cur is not None and cur.source == "queue" and cur.kind == "clip":
            try:
                if q.is_cancel_requested(cur.segment_id or ""):
                    self._cut_current(frame, marks)
            except Exception as e:  # noqa: BLE001
                self._log.error("queue_cancel_check_failed", error=repr(e))
        # Only a waiting play_now clip may cut (a cancel of a clip already cut into the look-ahead must not make the
        # next queue clip jump in early), and only while its cut has not happened: a play_now clip waiting behind
        # another one, or requeued, is no longer asking for one (the spool's interrupt flag; the flag stays up
        # meanwhile for a cancelled clip whose cut has not aired yet).
        try:
            head = q.peek()
        except Exception as e:  # noqa: BLE001
            self._log.error("queue_peek_failed", error=repr(e))
            return False
        if head is None or head.mode != "play_now" or not getattr(head, "interrupt", True):
            return False
        cur = self._cur
        if cur is not None and cur.kind == "clip" and cur.started:
            # play_now acts on the air: the clip on air is cut here even while the new clip still waits for its
            # head start (idle fills the gap), never played on until the new clip is admitted.
            self._cut_current(frame, marks, replay=True)
        nxt = self._next_from_queue(frame, marks)
        if nxt is not None:
            self._cut_current(frame, marks)
            self._cur = nxt
        return nxt is None and self._queue_refused

    # -- re-planning (playout/replan.py) -----------------------------------------------------------
    def forget_before(self, frame: int | None) -> None:
        """Chunks starting before `frame` are on air or aired: they can no longer be re-planned."""
        if frame is None:
            return
        i = 0
        while i < len(self._snaps) and self._snaps[i].start_frame < frame:
            i += 1
        del self._snaps[:i]

    def first_frame(self) -> int:
        """The earliest frame that can still be re-planned (the timeline's end when nothing can)."""
        return self._snaps[0].start_frame if self._snaps else self.frame

    def cut(self, segment_id: str) -> None:
        """The clip was cancelled on air: stop cutting it at the next chunk (the spool may settle it first)."""
        self._cut_ids.add(segment_id)
        if len(self._cut_ids) > 256:
            self._cut_ids.pop()

    def clip_at(self, frame: int | None) -> str | None:
        """The clip being cut (started) at the chunk boundary `frame`, if that chunk can still be re-planned."""
        c = self._playing_at(frame)
        return c.segment_id if c is not None and c.kind == "clip" and c.started else None

    def source_at(self, frame: int | None) -> Source | None:
        """"queue" or "programme": where the clip `clip_at(frame)` comes from (None when nothing is)."""
        c = self._playing_at(frame)
        return c.source if c is not None and c.kind == "clip" and c.started else None

    def _playing_at(self, frame: int | None) -> "_Playing | None":
        sn = next((s for s in self._snaps if frame is None or s.start_frame >= frame), None)
        return sn.cur if sn is not None else self._cur

    def replan_point(self, air_frame: int | None, keep: Keep,
                     not_before: int = 0) -> int:
        """Where a re-plan starts: the first chunk boundary at or after `not_before` that is not on air yet
        (`air_frame`) and whose chunk is not kept: keep "on_air" keeps the chunks that hold only the clip on air
        (so it keeps its buffered frames), "queue" every chunk that holds only queue clips or only the clip on air (an
        enqueue re-plans only idle, pause and programme chunks not on air, which a queue clip goes before)."""
        snaps = [s for s in self._snaps if air_frame is None or s.start_frame >= air_frame]
        if not snaps:
            return self.frame
        on_air = self.clip_at(air_frame)
        for sn in snaps:
            if sn.start_frame >= not_before and not self._kept(sn, keep, on_air):
                return sn.start_frame
        return self.frame

    def last_queue_chunk(self, air_frame: int | None) -> int:
        """The first frame of the last chunk not on air yet that holds a queue clip (0: none): what an enqueue
        re-plans from lies at or after it."""
        return max((s.start_frame for s in self._snaps if (air_frame is None or s.start_frame >= air_frame)
                    and s.holds_queue), default=0)

    @staticmethod
    def _kept(sn: _Snapshot, keep: Keep, on_air: str | None) -> bool:
        """A re-plan that keeps `keep` leaves this chunk as it is. "queue" keeps the chunks of the clip on air too
        (a programme clip plays on to its end before a queue clip takes over: re-cutting it would only render it
        again, and a renderer slower than real time could not do that in time)."""
        only_on_air = on_air is not None and sn.segments == frozenset([on_air])
        if keep == "queue":
            return sn.queue_only or only_on_air
        return keep == "on_air" and only_on_air

    def split_at(self, frame: int, keep: Keep, on_air: str | None) -> Split | None:
        """Re-cut the chunk holding `frame` (buffered or on air) up to `frame`, without touching the timeline: what
        its first frames hold when cut again, and the state at `frame`, for `rewind(frame, split)`. None when that
        chunk is kept (as in `replan_point`), is not held, or picked anything from the queue or the programme
        (only what was playing goes on in a re-cut, so nothing but the state at `frame` needs undoing). The caller
        checks `Split.chunk` against what was rendered before it re-plans there."""
        i = next((k for k in range(len(self._snaps) - 1, -1, -1) if self._snaps[k].start_frame < frame), None)
        if i is None:
            return None
        sn = self._snaps[i]
        end = self._snaps[i + 1].start_frame if i + 1 < len(self._snaps) else self.frame
        if not frame < end or sn.ops or self._kept(sn, keep, on_air):
            return None
        scratch = copy.copy(self)
        scratch.replannable, scratch._snaps, scratch.starved_samples = False, [], 0
        scratch._cur = dataclasses.replace(sn.cur) if sn.cur is not None else None
        scratch._chunk_index, scratch._sample, scratch._history = sn.chunk_index, sn.sample, sn.history
        scratch._queue_end = sn.queue_end
        chunk, snap = scratch._cut(frame - sn.start_frame, pick=False)
        snap.programme = sn.programme  # a re-cut picks nothing: the programme stands where it stood before the chunk
        return Split(frame, chunk, snap, scratch._cur, scratch._chunk_index, scratch._sample, scratch._history,
                     scratch.starved_samples, scratch._queue_end)

    def rewind(self, frame: int, split: Split | None = None, *, ramp: bool = True) -> list[tuple[str, Any]]:
        """Undo every chunk cut from `frame` on (the caller has discarded them); returns the undone operations.

        Clips taken in those chunks go back to the head of the queue in their order (`queue.untake`), requeued clips
        back to playing (`queue.unrequeue`), and the first programme item picked is played again. With `split`
        (from `split_at(frame)`), `frame` lies inside a chunk whose first frames stay: cutting goes on from the
        state at `frame`. The re-cut future starts with the lead-in's ramp, or with `ramp` False whole chunks (a
        queue clip picked on a whole chunk's first frame still shrinks it and starts a ramp).
        """
        if split is not None:
            if split.frame != frame:
                raise ValueError(f"a split at frame {split.frame} cannot re-plan from frame {frame}")
            undone = self.rewind(split.snap.start_frame)
            self._cur, self._chunk_index, self._sample, self._history = split.cur, split.chunk_index, split.sample, \
                split.history
            self._queue_end = split.queue_end
            self._ramp = self._lead() if ramp else ()  # (Replanner: `first_chunks_s`)
            self.starved_samples += split.starved
            self._snaps.append(split.snap)
            return undone
        i = next((k for k, sn in enumerate(self._snaps) if sn.start_frame == frame), None)
        if i is None:
            if frame >= self.frame:
                return []
            raise ValueError(f"cannot re-plan from frame {frame}: it is on air or not a chunk boundary")
        gone = self._snaps[i:]
        del self._snaps[i:]
        self.starved_samples -= sum(sn.starved for sn in gone)
        undone = [op for sn in gone for op in sn.ops]
        # The programme goes back to where it stood before the first undone chunk: every item picked in the undone
        # future is picked again in its order, and a play_now cut's replay that is undone is forgotten. Where it
        # cannot (no checkpoint, or the playlist was reloaded since), the first clip picked is played again.
        restored = False
        if gone[0].programme is not None and self.programme is not None:
            try:
                restored = bool(self.programme.restore(gone[0].programme))
            except Exception as e:  # noqa: BLE001
                self._log.error("programme_restore_failed", error=repr(e))
        first_item = None if restored else next(
            (arg for op, arg in undone if op == "programme" and arg.kind != "pause"), None)
        if any(op == "programme" and arg is self._held_item for op, arg in undone):
            self._held_item = None  # picked in the undone future: the programme rewinds to first_item below
        for op, arg in reversed(undone):
            if self.queue is not None and op in ("take", "requeue"):
                try:
                    (self.queue.untake if op == "take" else self.queue.unrequeue)(arg)
                except Exception as e:  # noqa: BLE001 - the spool logs; recovery still has the clip
                    self._log.error("queue_undo_failed", op=op, segment_id=arg, error=repr(e))
        sn = gone[0]
        self._cur = dataclasses.replace(sn.cur) if sn.cur is not None else None
        self._chunk_index, self._sample, self._history = sn.chunk_index, sn.sample, sn.history
        self._queue_end = sn.queue_end
        self._ramp = self._lead() if ramp else ()  # (Replanner: `first_chunks_s`)
        if first_item is not None and self.programme is not None:
            try:
                self.programme.rewind(first_item)
            except Exception as e:  # noqa: BLE001
                self._log.error("programme_rewind_failed", error=repr(e))
        return undone

    def planned_starts(self, air_frame: int | None) -> list[tuple[str, int]]:
        """(segment_id, timeline frame) of the queue clips cut to start at or after `air_frame` (not on air yet)."""
        return [(sid, sn.start_frame) for sn in self._snaps if air_frame is None or sn.start_frame >= air_frame
                for sid in sn.started]

    def programme_ahead(self, air_frame: int | None) -> bool:
        """Whether a programme clip was taken in a chunk cut to start at or after `air_frame` (not on air yet). A
        pause is not counted: it gives way to a waiting queue clip at its next chunk."""
        return any(op == "programme" and item.kind == "clip" for sn in self._snaps
                   if air_frame is None or sn.start_frame >= air_frame for op, item in sn.ops)

    def stream_shortfall(self) -> int:
        """Broadcast samples the next chunk still lacks from the streamed clip being cut (0: none, or all there)."""
        cur = self._cur
        if cur is None or cur.stream is None or cur.complete:
            return 0
        return max(0, self.next_frames * self.spf - cur.remaining)

    @property
    def next_frames(self) -> int:
        """Frames of the next chunk cut: a ramp's next length, a live chunk while a stream's producer is not ahead,
        else a whole chunk (which shrinks to the first lead-in length if a queue clip starts on its first frame)."""
        if self._ramp:
            return self._ramp[0]
        return self._live_frames(self._cur) or self.chunk_frames

    def wait_stream(self, timeout: float) -> None:
        """Until the streamed clip being cut grows or ends (or timeout); at once when none is."""
        cur = self._cur
        if cur is not None and cur.stream is not None:
            cur.stream.wait(timeout)

    @property
    def remaining_s(self) -> float:
        """Seconds of the clip or pause being cut that are not cut yet."""
        return self._cur.remaining / self.rate if self._cur is not None else 0.0

    def render_begins(self, chunk: RenderChunk) -> None:
        """A ChunkSource's hook (playout/ports.py): a timeline of one plan has no re-plan to tell."""

    def abandoned(self) -> None:
        """A ChunkSource's hook (playout/ports.py): nothing here abandons a chunk."""

    def _programme_checkpoint(self) -> Any:
        """Where the programme stands (a snapshot's, for `rewind`); None without a programme that keeps one."""
        checkpoint = getattr(self.programme, "checkpoint", None)
        if checkpoint is None:
            return None
        try:
            return checkpoint()
        except Exception as e:  # noqa: BLE001 - the programme is best effort
            self._log.error("programme_checkpoint_failed", error=repr(e))
            return None

    # -- the one public operation ---------------------------------------------------------------
    def next_chunk(self) -> RenderChunk:
        """Cut the next chunk (`next_frames` frames) of audio, with marks and per-frame bookkeeping."""
        chunk, snap = self._cut(self.next_frames, pick=True)
        if self.replannable:
            self._snaps.append(snap)
            if len(self._snaps) > 1024:  # far beyond any look-ahead (lookahead_s <= 600 s): a missed forget
                del self._snaps[:256]
        return chunk

    def _cut(self, nf: int, *, pick: bool) -> tuple[RenderChunk, _Snapshot]:
        """Cut `nf` frames from the state now. pick=False (a re-plan within a chunk, `split_at`): no spool or
        programme call at all: what plays goes on, then idle."""
        spf = self.spf
        n = nf * spf
        s0 = self._sample
        f0 = s0 // spf
        m0 = self._m(s0)
        audio = np.zeros((n, self.channels), np.float32)
        model = np.zeros(self._m(s0 + n) - m0, np.float32)
        marks: list[Mark] = []
        starved: dict[int, int] = {}  # producer pauses by global frame (RenderChunk.starved)
        snap = _Snapshot(f0, dataclasses.replace(self._cur) if self._cur is not None else None,
                         self._chunk_index, s0, self._history, queue_end=self._queue_end,
                         programme=self._programme_checkpoint() if pick and self.replannable else None)
        self._ops = snap.ops
        # A queue clip picked on this chunk's first frame is cut into this chunk, then the rest of the ramp; with no
        # ramp going on, the chunk shrinks to the first lead-in length and a ramp starts.
        self._offer = ()
        if pick and self._ramp:
            self._offer, self._ramp = self._ramp, self._ramp[1:]
        elif pick and self.lead_in and nf == self.chunk_frames:
            self._offer = self._lead()
        best_seg: list[str | None] = [None] * nf
        best_cnt = [0] * nf
        queue_ids: set[str | None] = set()

        # play_now / cancel: cut at this chunk boundary. A pause also gives way to any waiting queue clip.
        interrupt = asked = False
        if self._cur is not None and self._cur.segment_id in self._cut_ids:
            self._cut_current(f0, marks)  # cancelled on air; its 'interrupted' aired already (Lookahead.cut)
        if self.queue is not None and pick:
            try:
                interrupt = bool(self.queue.interrupt_pending())
            except Exception as e:  # noqa: BLE001
                self._log.error("queue_interrupt_check_failed", error=repr(e))
        if interrupt:
            asked = self._handle_interrupt(f0, marks)  # the gate refused the play_now clip here: idle, not asked again
        elif self._cur is not None and self._cur.kind == "pause" and pick:
            nxt = self._next_from_queue(f0, marks)
            if nxt is not None:
                self._cut_current(f0, marks)
                self._cur = nxt

        filled = 0
        while filled < n:
            if filled:
                self._offer = ()  # a clip starting mid-chunk follows what played: no lead-in
            if self._cur is None:
                self._cur = self._pick((s0 + filled) // spf, marks) if pick and not (asked and not filled) else None
                if self._cur is None:
                    break  # idle silence for the rest of the chunk
            cur = self._cur
            live = self._live_frames(cur) if self._offer and not filled and nf == self.chunk_frames else None
            if self._offer and not filled and not cur.started and cur.kind == "clip" and cur.source == "queue" \
                    and (live or nf != self._offer[0]):  # a whole chunk: shrink it, the ramp (live chunks) start here
                nf, self._ramp = (live, ()) if live else (self._offer[0], self._offer[1:])
                n = nf * spf
                audio, model = audio[:n], model[: self._m(s0 + n) - m0]
                del best_seg[nf:], best_cnt[nf:]
            take = min(n - filled, cur.remaining)
            a = s0 + filled  # global sample of this piece's first sample
            if not cur.started:
                cur.started, cur.start_sample = True, a
                if cur.kind == "clip":
                    marks.append(Mark(a // spf, "started", cur.segment_id or "", cur.source))
            if take == 0 and not cur.complete:
                # A streamed clip whose producer is behind: a pause inside the clip for the rest of the chunk
                # (its frames stay the clip's, silent); its audio goes on from here in the next chunk.
                take = n - filled
                queue_ids.add(cur.segment_id)
                for f in range(filled // spf, (filled + take - 1) // spf + 1):
                    cnt = min(filled + take, (f + 1) * spf) - max(filled, f * spf)
                    if cnt >= best_cnt[f]:
                        best_cnt[f], best_seg[f] = cnt, cur.segment_id
                    starved[f0 + f] = starved.get(f0 + f, 0) + cnt
                cur.gap += take
                snap.starved += take
                self.starved_samples += take
                filled += take
                break
            if take > 0 and cur.kind == "clip":
                if cur.source == "queue":
                    queue_ids.add(cur.segment_id)
                # Model audio for the same instants, aligned to the clip's own start on the 16 kHz grid (a stream's
                # pauses shift where its own audio sits on the broadcast clock).
                ga, gb = self._m(a), self._m(a + take)
                lo = ga - self._m(cur.start_sample + cur.gap)
                if cur.stream is not None:
                    audio[filled : filled + take] = cur.stream.broadcast(cur.pos, take)
                    src = cur.stream.model(lo, gb - ga)
                else:
                    assert cur.broadcast is not None and cur.model is not None
                    audio[filled : filled + take] = cur.broadcast[cur.pos : cur.pos + take]
                    src = cur.model[lo : lo + (gb - ga)]
                model[ga - m0 : ga - m0 + src.shape[0]] = src
                for f in range(filled // spf, (filled + take - 1) // spf + 1):
                    cnt = min(filled + take, (f + 1) * spf) - max(filled, f * spf)
                    if cnt >= best_cnt[f]:
                        best_cnt[f], best_seg[f] = cnt, cur.segment_id
            cur.pos += take
            filled += take
            # `complete` first: a stream ends after its last audio (LiveStream.end follows the close's extend, on
            # an ingest worker), so once it reads ended, `remaining` is final; the other order could end the clip
            # between a close's tail and its end, and that tail never aired.
            if cur.complete and cur.remaining == 0:
                if cur.kind == "clip":
                    last = max(a + take - 1, cur.start_sample)
                    if cur.stream is not None and cur.stream.cut:  # its producer went silent: cut, not finished
                        marks.append(Mark(last // spf, "interrupted", cur.segment_id or "", cur.source,
                                          reason=cur.stream.cut))
                    else:
                        marks.append(Mark(last // spf, "finished", cur.segment_id or "", cur.source))
                    if cur.source == "queue":
                        self._queue_end = a + take
                self._cur = None

        if self.history_len:
            # A new array every chunk (never written in place), so chunks can share it without copying.
            self._history = np.concatenate([self._history, model])[-self.history_len :]
        chunk = RenderChunk(
            index=self._chunk_index,
            start_frame=f0,
            n_frames=nf,
            audio=audio,
            model_audio=model,
            frame_segments=best_seg,
            marks=marks,
            idle=all(s is None for s in best_seg),
            model_history=self._history,
            starved=starved,
        )
        snap.segments = frozenset(best_seg)
        snap.queue_only = all(sid is not None and sid in queue_ids for sid in best_seg)
        snap.holds_queue = any(sid is not None and sid in queue_ids for sid in best_seg)
        snap.started = tuple(m.segment_id for m in marks if m.kind == "started" and m.source == "queue")
        self._chunk_index += 1
        self._sample += n
        return chunk, snap
