"""Streamed clips: a producer opens a clip, appends its audio as a TTS makes it, and closes it.

The contract (docs/protocol.md "Streamed clips"):

* `open` queues the clip at once (enqueue / insert / play_now, like a whole clip) with no audio; the spool keeps a
  `streams` row beside it. Each `append(seq, bytes)` is decoded (a bad piece is refused and stores nothing), stored
  in the spool as one part and committed (fsynced) *before* the ack, then handed to the clip's `LiveStream`, which
  the timeline cuts as it grows. `seq` starts at 0: a seq already stored is acknowledged again and ignored (a resend
  after a lost reply), a seq past the next expected is refused (`sequence_gap`), so the audio is whole and in order.
* `close` ends it (the decoder's tail is added); `abort` drops it (pending: gone; on air: cut, like cancel).
* Limits: open streams per peer and in all, bytes per stream, and `idle_timeout_s` between appends: a stream idle
  that long is closed as *cut* (it airs what it received, then `interrupted` with reason `stream_timeout`; with no
  audio at all it is dropped with that event). So a producer that vanished never holds the queue.
* A crash: every acknowledged part is in the spool. At the next start `recover()` rebuilds each stream still in the
  spool from its parts (decoding them again gives the same samples); an open one may be resumed by its producer
  (`append` with the next seq) and its idle clock starts at the restart. A stream that was on air replays from its
  start, as every clip on air at a crash does (queue/spool.py).

Threads: the ingest workers call open/append/close/abort; the render thread reads `LiveStream`s (the timeline);
housekeeping calls `sweep()`. One lock guards the registry; each LiveStream has its own condition.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np

from flashtalk_live.errors import Rejection
from flashtalk_live.audio import AudioError, StreamDecoder
from flashtalk_live.log import get_logger
from flashtalk_live.queue.spool import AddResult, Mode, Spool, SpoolError
from flashtalk_live.settings import EncoderSettings, IngestSettings, StreamSettings

if TYPE_CHECKING:
    from flashtalk_live.playout.ports import LiveAudio

MODEL_RATE = 16_000

# A producer at least this many times faster than real time starts in a lead-in on its first short chunk; a slower
# one waits as long as the lead-in gains, so it airs when it would have without one and keeps ahead of the air.
LEAD_IN_PACE = 2.0


class LiveStream:
    """The decoded audio of one streamed clip so far, growing; what the timeline cuts (playout/timeline.py).

    `available` broadcast samples are readable; `ended` once closed or cut (then `available` is final). Readers
    never see a sample change: the buffers only grow (a reallocation copies before the count moves)."""

    def __init__(self, segment_id: str, rate: int, channels: int, declared_s: float | None) -> None:
        self.segment_id, self.rate, self.channels, self.declared_s = segment_id, rate, channels, declared_s
        self._bc = np.zeros((rate, channels), np.float32)
        self._md = np.zeros(MODEL_RATE, np.float32)
        self.available = 0  # broadcast samples
        self.model_available = 0
        self.ended = False
        self.first_byte: float | None = None  # monotonic time its first piece was acknowledged (this process)
        self.cut: str | None = None  # why it ended without its producer's close ("stream_timeout", "aborted")
        self.cond = threading.Condition()

    @staticmethod
    def _grow(buf: np.ndarray, need: int) -> np.ndarray:
        if need <= buf.shape[0]:
            return buf
        out = np.zeros((max(need, 2 * buf.shape[0]),) + buf.shape[1:], np.float32)
        out[: buf.shape[0]] = buf
        return out

    def extend(self, bc: np.ndarray, md: np.ndarray) -> None:
        with self.cond:
            n, m = self.available, self.model_available
            self._bc = self._grow(self._bc, n + bc.shape[0])
            self._bc[n : n + bc.shape[0]] = bc
            self._md = self._grow(self._md, m + md.shape[0])
            self._md[m : m + md.shape[0]] = md
            self.available, self.model_available = n + bc.shape[0], m + md.shape[0]
            self.cond.notify_all()

    def end(self, cut: str | None = None) -> None:
        with self.cond:
            self.ended, self.cut = True, cut
            self.cond.notify_all()

    def broadcast(self, pos: int, n: int) -> np.ndarray:
        return self._bc[pos : min(pos + n, self.available)]

    def model(self, pos: int, n: int) -> np.ndarray:
        return self._md[max(pos, 0) : min(pos + n, self.model_available)]

    @property
    def seconds(self) -> float:
        return self.available / self.rate

    def startable(self, min_samples: int) -> bool:
        """Enough audio to start on air without an early pause: `min_samples`, or the whole (ended) stream."""
        return self.available >= min_samples or (self.ended and self.available > 0)

    def wait(self, timeout: float) -> None:
        """Until more audio arrives or the stream ends (or timeout)."""
        with self.cond:
            n = self.available
            self.cond.wait_for(lambda: self.available != n or self.ended, timeout)


@dataclass
class _Open:
    """An open stream's producer side."""

    live: LiveStream
    decoder: StreamDecoder
    mode: str
    peer: str
    next_seq: int
    bytes: int
    last_append: float  # monotonic
    ready_told: bool = False  # the clip became startable and the plan was told (on_ready)
    lock: threading.Lock = field(default_factory=threading.Lock)


class StreamRegistry:
    """Open streams (producer side) and every streamed clip's `LiveStream` (air side) until it leaves the spool.

    on_ready(segment_id, mode): a stream just received enough audio to start (the daemon re-plans, as for a whole
    clip, so it does not wait behind buffered idle). on_cut(segment_id, had_audio): the idle timeout closed it."""

    def __init__(self, cfg: StreamSettings, ingest: IngestSettings, encoder: EncoderSettings, spool: Spool, *,
                 chunk_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        """chunk_s: a whole render chunk."""
        self.cfg, self.ingest, self.spool = cfg, ingest, spool
        self.rate, self.channels = encoder.audio_rate, encoder.audio_channels
        self.prebuffer_s = cfg.prebuffer_s
        self.chunk_s = chunk_s
        # The first chunk a clip starting now is cut into (the timeline's: a lead-in ramp's first length, which the
        # admission chooses from measured times), and how much sooner a lead-in airs (the admission's).
        self.first_chunk_s: Callable[[], float] = lambda: chunk_s
        self.lead_gain_s: Callable[[], float] = lambda: 0.0
        self.live_chunk_s: Callable[[], float | None] = lambda: None  # the timeline's, for a producer not ahead
        self.clock = clock
        self.on_ready: Callable[[str, str], None] = lambda segment_id, mode: None
        self.on_cut: Callable[[str, bool], None] = lambda segment_id, had_audio: None
        self._lock = threading.Lock()
        self._open: dict[str, _Open] = {}
        self._live: dict[str, LiveStream] = {}
        self._ended: dict[str, str] = {}  # recently ended streams -> "closed" | "cut" | "aborted" (for the codes)
        self._closes: dict[str, dict[str, Any]] = {}  # recently closed streams -> their close's reply (a resent close)
        self.opened = self.closed_count = self.cut_count = self.aborted = 0
        self.log = get_logger("streams")
        self.recover()

    # -- the air side ----------------------------------------------------------------------------------
    def live(self, segment_id: str) -> LiveStream | None:
        with self._lock:
            return self._live.get(segment_id)

    def start_s(self, live: LiveAudio, first_s: float, gain_s: float, live_s: float | None = None) -> float:
        """Seconds of audio `live` needs to start in a chunk of first_s seconds: that chunk and the jitter allowance
        (prebuffer_s). A lead-in's first chunk airs sooner by gain_s than a whole one, which a producer below
        LEAD_IN_PACE cannot keep ahead of: it waits for a whole chunk, the allowance and the gain instead; or,
        where the timeline cuts such a stream in live chunks of live_s seconds (each renders within its air), for
        the longer of one of them and the chunk cut for it (after a re-plan, the ramp's first), and the allowance."""
        if first_s >= self.chunk_s or live.ended or self.pace(live) >= LEAD_IN_PACE:
            return first_s + self.prebuffer_s
        if live_s is not None:
            return max(first_s, live_s) + self.prebuffer_s
        return self.chunk_s + self.prebuffer_s + gain_s

    def _ready(self, live: LiveStream) -> bool:
        """Startable in a lead-in's first chunk, or a whole one (the plan is told then: on_ready)."""
        start = self.start_s(live, self.first_chunk_s(), self.lead_gain_s(), self.live_chunk_s())
        return live.startable(int(round(start * self.rate)))

    def pace(self, live: LiveAudio) -> float:
        """Seconds of audio a stream received per second since its first piece (0.0 before one)."""
        if live.first_byte is None:
            return 0.0
        return live.seconds / max(self.clock() - live.first_byte, 1e-3)

    def forget(self, segment_id: str) -> None:
        """The clip left the spool (finished, interrupted, dropped): its audio is no longer needed."""
        with self._lock:
            self._live.pop(segment_id, None)
            o = self._open.pop(segment_id, None)
        if o is not None:
            o.live.end(cut="aborted")

    def on_event(self, e: dict[str, Any]) -> None:
        """EventBus subscriber: forget a streamed clip once it is gone for good."""
        sid = e.get("segment_id")
        if not sid or sid not in self._live:
            return
        if e["type"] in ("finished", "dropped") or (e["type"] == "interrupted" and not e.get("requeued")):
            self.forget(sid)

    # -- restart ---------------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Rebuild every streamed clip still in the spool from its stored parts; open ones may be resumed."""
        now = self.clock()
        resumed = []
        for row in self.spool.stream_rows():
            sid = row["segment_id"]
            live = LiveStream(sid, self.rate, self.channels, row["declared_s"])
            dec = StreamDecoder(row["format"], row["sample_rate"], row["channels"], rate=self.rate,
                                out_channels=self.channels)
            nbytes = 0
            try:
                for part in self.spool.stream_parts(sid):
                    nbytes += len(part)
                    live.extend(*dec.feed(part))
                if row["state"] != "open":
                    live.extend(*dec.flush())
            except AudioError as e:  # stored parts were decoded once already; keep what decodes
                self.log.error("stream_recover_decode_failed", segment_id=sid, error=str(e))
            if row["state"] != "open" and live.available == 0:
                # Ended with no audio (a crash between an empty stream's cut and its leaving the queue): it could
                # never start, and would hold the head of the queue for ever.
                self.spool.cancel(sid)
                self._remember_end(sid, row["state"])
                self.log.warning("stream_recovered_empty_dropped", segment_id=sid, state=row["state"])
                continue
            self._live[sid] = live
            if row["state"] == "open":
                entry = self.spool.get(sid)
                self._open[sid] = _Open(live, dec, entry.mode if entry else "enqueue", row["peer"], row["next_seq"],
                                        nbytes, now)
                resumed.append(sid)
            else:
                live.end(cut="stream_timeout" if row["state"] == "cut" else None)
                # a later append or close: the same answer as before the restart
                self._remember_end(sid, row["state"], {"segment_id": sid, "duration_s": round(live.seconds, 6),
                                                       "received_bytes": nbytes, "parts": row["next_seq"]})
        if resumed:
            self.log.info("streams_recovered", open=resumed, idle_timeout_s=self.cfg.idle_timeout_s)
        return resumed

    # -- the producer side (ingest workers) ------------------------------------------------------------
    def open(self, meta: dict[str, Any], mode: Mode, request_id: str | None, *, format: str,
             sample_rate: int | None, channels: int | None, declared_s: float | None, peer: str) -> AddResult:
        dec = StreamDecoder(format, sample_rate, channels, rate=self.rate, out_channels=self.channels)
        with self._lock:
            if len(self._open) >= self.cfg.max_open:
                raise Rejection("too_many_streams", f"{len(self._open)} streams open, limit streams.max_open "
                                                    f"{self.cfg.max_open}")
            mine = sum(1 for o in self._open.values() if o.peer == peer)
            if mine >= self.cfg.max_open_per_peer:
                raise Rejection("too_many_streams", f"this peer has {mine} streams open, limit "
                                                    f"streams.max_open_per_peer {self.cfg.max_open_per_peer}")
            res = self.spool.open_stream(meta, mode, request_id, format=format, sample_rate=sample_rate,
                                         channels=channels, declared_s=declared_s, peer=peer)
            if res.duplicate:
                return res
            sid = res.entry.segment_id
            live = LiveStream(sid, self.rate, self.channels, declared_s)
            self._live[sid] = live
            self._open[sid] = _Open(live, dec, mode, peer, 0, 0, self.clock())
            self.opened += 1
        self.log.info("stream_opened", segment_id=sid, mode=mode, format=format, declared_s=declared_s, peer=peer)
        return res

    def _get_open(self, segment_id: str) -> _Open:
        with self._lock:
            o = self._open.get(segment_id)
            ended = self._ended.get(segment_id)
        if o is not None:
            return o
        if ended == "cut":
            raise Rejection("stream_timed_out", f"stream {segment_id[:64]!r} had no append for "
                                                f"{self.cfg.idle_timeout_s:g} s and was closed as cut", "segment_id")
        if ended is not None or segment_id in self._live:
            raise Rejection("stream_closed", f"stream {segment_id[:64]!r} is {ended or 'closed'}", "segment_id")
        raise Rejection("unknown_stream", f"no open stream {segment_id[:64]!r}", "segment_id")

    def _still_open(self, segment_id: str, o: _Open) -> bool:
        """Under o.lock: `o` is still the open stream (a close, abort or the sweep may have ended it while this
        worker waited for the lock; it must not be ended, or appended to, a second time)."""
        with self._lock:
            return self._open.get(segment_id) is o

    def _remember_end(self, segment_id: str, how: str, closed: dict[str, Any] | None = None) -> None:
        self._ended[segment_id] = how
        while len(self._ended) > 1024:
            self._ended.pop(next(iter(self._ended)))
        if how == "closed" and closed is not None:
            self._closes[segment_id] = closed
            while len(self._closes) > 1024:
                self._closes.pop(next(iter(self._closes)))

    def append(self, segment_id: str, seq: int, data: bytes) -> dict[str, Any]:
        """Store and air one piece; the ack. Duplicate seqs are acknowledged with `duplicate: true`."""
        o = self._get_open(segment_id)
        with o.lock:
            if not self._still_open(segment_id, o) or self._timed_out(segment_id, o):
                return self.append(segment_id, seq, data)  # now ended: the right code
            if seq < o.next_seq:
                return self._ack(segment_id, o, seq, duplicate=True)
            if seq > o.next_seq:
                raise Rejection("sequence_gap", f"expected seq {o.next_seq}, got {seq}: resend from {o.next_seq}",
                                "seq")
            if o.bytes + len(data) > self.cfg.max_stream_bytes:
                raise Rejection("stream_too_large", f"stream would hold {o.bytes + len(data)} bytes, limit "
                                                    f"streams.max_stream_bytes {self.cfg.max_stream_bytes}")
            try:
                bc, md = o.decoder.feed(data)
            except AudioError:
                o.decoder = self._rebuilt_decoder(segment_id, o.decoder)  # the refused piece must leave no trace
                raise
            added = bc.shape[0] / self.rate
            if o.live.seconds + added > self.ingest.max_clip_seconds:
                o.decoder = self._rebuilt_decoder(segment_id, o.decoder)
                raise Rejection("too_long", f"stream would be {o.live.seconds + added:.1f} s, limit "
                                            f"ingest.max_clip_seconds {self.ingest.max_clip_seconds:g} s")
            try:
                self.spool.append_stream(segment_id, seq, data, added)
            except (SpoolError, Exception):
                o.decoder = self._rebuilt_decoder(segment_id, o.decoder)
                raise
            o.next_seq, o.bytes, o.last_append = seq + 1, o.bytes + len(data), self.clock()
            if seq == 0:
                o.live.first_byte = o.last_append
            o.live.extend(bc, md)
            became_ready = not o.ready_told and self._ready(o.live)
            o.ready_told = o.ready_told or became_ready
            ack = self._ack(segment_id, o, seq, duplicate=False)
        if became_ready:
            self.on_ready(segment_id, o.mode)
        return ack

    def _rebuilt_decoder(self, segment_id: str, old: StreamDecoder) -> StreamDecoder:
        """A decoder in the state of the stored parts (after a refused piece or a failed write), set up as `old`: the
        clip may have left the spool meanwhile (a cancel or clear racing the append), and the refusal must still
        reach the producer with its own code."""
        dec = StreamDecoder(old.format, old.sample_rate, old.channels, rate=self.rate, out_channels=self.channels)
        for part in self.spool.stream_parts(segment_id):
            dec.feed(part)
        return dec

    def _ack(self, segment_id: str, o: _Open, seq: int, *, duplicate: bool) -> dict[str, Any]:
        return {"segment_id": segment_id, "seq": seq, "duplicate": duplicate, "next_seq": o.next_seq,
                "received_bytes": o.bytes, "received_s": round(o.live.seconds, 3)}

    def close(self, segment_id: str, duration_s: float | None = None) -> dict[str, Any]:
        """End the stream; its reply (`duplicate: false`). A close resent after a lost reply (the stream was closed
        by its producer already) is answered the same again with `duplicate: true`, as a resent append is: a
        refusal there would tell the producer its clip failed (and Client.stream would abort it)."""
        with self._lock:
            again = self._closes.get(segment_id)
        if again is not None:
            return {**again, "duplicate": True}
        o = self._get_open(segment_id)
        with o.lock:
            if not self._still_open(segment_id, o) or self._timed_out(segment_id, o):
                return self.close(segment_id, duration_s)  # now ended: the right code
            bc, md = o.decoder.flush()
            if o.live.available + bc.shape[0] == 0:
                self.abort(segment_id, why="empty")
                self.spool.cancel(segment_id)  # nothing to air: it leaves the queue
                with self._lock:  # no event tells on_event: nothing of it is kept
                    self._live.pop(segment_id, None)
                raise Rejection("empty_audio", f"stream {segment_id[:64]!r} closed with no audio: dropped")
            self._end_stored(segment_id, o, "closed", bc.shape[0] / self.rate)
            o.live.extend(bc, md)
            o.live.end()
            got = o.live.seconds
            res = {"segment_id": segment_id, "duration_s": round(got, 6), "received_bytes": o.bytes,
                   "parts": o.next_seq}
            with self._lock:
                self._open.pop(segment_id, None)
                self._remember_end(segment_id, "closed", res)
            self.closed_count += 1
        if duration_s is not None and abs(duration_s - got) > 0.1:
            self.log.warning("stream_duration_differs", segment_id=segment_id, declared_s=duration_s, received_s=got)
        self.log.info("stream_closed", segment_id=segment_id, duration_s=round(got, 3), bytes=o.bytes)
        if not o.ready_told:  # shorter than the head start it waited for: it may start now
            o.ready_told = True
            self.on_ready(segment_id, o.mode)
        return {**res, "duplicate": False}

    def _end_stored(self, segment_id: str, o: _Open, how: Literal["closed", "cut"], tail_s: float) -> None:
        """The stream's end in the spool, after its decoder was flushed (under o.lock). A failed write (a full disk)
        leaves the stream open with its decoder as the stored parts left it, so a retried close, or the next sweep,
        flushes the same tail again instead of losing it."""
        try:
            self.spool.end_stream(segment_id, how, tail_s)
        except BaseException:
            o.decoder = self._rebuilt_decoder(segment_id, o.decoder)
            raise

    def abort(self, segment_id: str, why: str = "aborted") -> None:
        """Forget the producer side; the caller drops the clip from the queue or cuts it on air."""
        with self._lock:  # a closed stream aborted (its clip dropped): a resent close no longer answers "closed"
            if self._closes.pop(segment_id, None) is not None:
                self._ended[segment_id] = "aborted"
        o = self._get_open(segment_id)
        with self._lock:
            self._open.pop(segment_id, None)
            self._remember_end(segment_id, "aborted")
            self.aborted += 1
        o.live.end(cut="aborted")
        self.log.info("stream_aborted", segment_id=segment_id, why=why)

    # -- timeouts (housekeeping) -----------------------------------------------------------------------
    def _timed_out(self, segment_id: str, o: _Open) -> bool:
        """Cut the stream if its idle time passed (under o.lock); True when it did."""
        if self.clock() - o.last_append <= self.cfg.idle_timeout_s:
            return False
        try:
            bc, md = o.decoder.flush()
        except AudioError:
            bc, md = np.zeros((0, self.channels), np.float32), np.zeros(0, np.float32)
        self._end_stored(segment_id, o, "cut", bc.shape[0] / self.rate)
        o.live.extend(bc, md)
        o.live.end(cut="stream_timeout")
        with self._lock:
            self._open.pop(segment_id, None)
            self._remember_end(segment_id, "cut")
            self.cut_count += 1
        self.log.warning("stream_timed_out", segment_id=segment_id, idle_timeout_s=self.cfg.idle_timeout_s,
                         received_s=round(o.live.seconds, 3))
        had_audio = o.live.available > 0
        if not had_audio:
            self.spool.cancel(segment_id)  # nothing to air: it leaves the queue (a cut of nothing)
        self.on_cut(segment_id, had_audio)
        if had_audio and not o.ready_told:  # shorter than its head start: it may start now
            o.ready_told = True
            self.on_ready(segment_id, o.mode)
        return True

    def sweep(self) -> list[str]:
        """Cut every open stream idle past `idle_timeout_s`; returns their ids."""
        with self._lock:
            items = list(self._open.items())
        cut = []
        for sid, o in items:
            with o.lock:
                try:
                    if sid in self._open and self._timed_out(sid, o):
                        cut.append(sid)
                except Exception as e:  # noqa: BLE001 - one stream's failed cut (a full disk) must not spare the rest
                    self.log.error("stream_timeout_cut_failed", segment_id=sid, error=repr(e))
        return cut

    def status(self) -> dict[str, Any]:
        with self._lock:
            open_ = [{"segment_id": sid, "received_s": round(o.live.seconds, 3), "bytes": o.bytes,
                      "next_seq": o.next_seq, "idle_s": round(self.clock() - o.last_append, 3)}
                     for sid, o in list(self._open.items())[:20]]
            n = len(self._open)
        return {"open": n, "open_streams": open_, "opened": self.opened, "closed": self.closed_count,
                "cut": self.cut_count, "aborted": self.aborted}

