"""The durable queue of acknowledged clips: one SQLite file in WAL mode with synchronous=FULL.

Why SQLite: every change that touches several clips (insert, play_now, clear, recovery) is one atomic transaction,
a commit is durable once `COMMIT` returns (the WAL is fsynced; SQLite fsyncs the directory when it creates the WAL
and we fsync it once more after opening), and a crash at any instant leaves either the old or the new queue, never a
mix. The original payload bytes are stored (not decoded audio), so decoding at play time is reproducible and the spool
stays small. Order is an integer `pos` among pending clips with gaps between neighbours, so an enqueue, insert or
play_now writes one row whatever the depth (a gap that runs out is renumbered once); totals per state are kept in
memory, so acks and `status` never scan the queue. A clip being broadcast is in state 'playing', from when the
timeline takes it (it may be rendered ahead, not on air yet); a re-plan gives such a clip back (`untake`), and a
clip cut by play_now goes back to pending to replay (`requeue`, undone by `unrequeue`); only an aired end deletes it.

Faults of the box (queue/faults.py): a spool SQLite cannot read at open is moved aside (never deleted) and a fresh one
opened, so the room goes on air; a reserve file is given back to the file system when the disk fills, so clips already
acknowledged still move from pending to playing to finished while new clips are refused with `disk_full`. A file
moved aside is salvaged by queue/salvage.py (`flashtalk-live spool salvage`).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from flashtalk_live.audio import ClipAudio, decode_audio
from flashtalk_live.queue.faults import RESERVE_BYTES, DiskReserve, SpoolDiskFull, SpoolError, fsync_dir, \
    is_disk_full, open_or_quarantine, refusing_full_disk
from flashtalk_live.settings import EncoderSettings, QueueSettings, StorageSettings

__all__ = ["DB_NAME", "MODES", "RESERVE_NAME", "AddResult", "Entry", "Mode", "Spool", "SpoolDiskFull", "SpoolError",
           "SpoolLimits", "SpoolLocked"]

Mode = Literal["enqueue", "insert", "play_now"]
MODES = ("enqueue", "insert", "play_now")
DB_NAME = "spool.sqlite3"
RESERVE_NAME = "spool.reserve"
GAP = 1 << 20  # distance between neighbouring positions when appending or renumbering
REQUEST_MEMORY = 10_000  # request ids remembered for de-duplication, finished clips included (and those still queued)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    segment_id TEXT NOT NULL UNIQUE,
    request_id TEXT UNIQUE,
    mode TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'playing')),
    pos INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,   -- play_now, insert or recovered: inserts go after these
    interrupt INTEGER NOT NULL DEFAULT 0,  -- play_now not yet started: cut the playing clip
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    taken_seq INTEGER,                     -- order in which clips were taken, for recovery
    duration_s REAL NOT NULL,
    format TEXT,
    sample_rate INTEGER,
    channels INTEGER,
    meta TEXT NOT NULL DEFAULT '{}',
    payload_bytes INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL,
    replays INTEGER NOT NULL DEFAULT 0     -- times recovered after a crash mid-broadcast
);
CREATE INDEX IF NOT EXISTS clips_order ON clips(state, pos, seq);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    ack TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS streams (      -- a streamed clip (clip_open .. clip_close); its clips row holds no payload
    segment_id TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('open', 'closed', 'cut')),
    next_seq INTEGER NOT NULL DEFAULT 0,  -- the sequence number the next append must carry
    declared_s REAL,                      -- the producer's announced duration, if it gave one
    peer TEXT NOT NULL DEFAULT '',
    opened REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS stream_parts (
    segment_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (segment_id, seq)
);
CREATE TRIGGER IF NOT EXISTS clips_stream_gone AFTER DELETE ON clips BEGIN
    DELETE FROM stream_parts WHERE segment_id = old.segment_id;
    DELETE FROM streams WHERE segment_id = old.segment_id;
END;
"""


class SpoolLocked(SpoolError):
    """Another process holds this spool (two daemons on one state directory would play clips twice)."""

    def __init__(self, path: Path) -> None:
        super().__init__("internal", f"spool {path} is locked by another process")


@dataclass(frozen=True)
class SpoolLimits:
    max_clips: int = 2000
    max_queued_seconds: float = 4 * 3600.0
    max_spool_bytes: int = 8 * 1024**3

    @classmethod
    def from_settings(cls, q: QueueSettings) -> "SpoolLimits":
        return cls(int(q.max_clips), float(q.max_queued_seconds), int(q.max_spool_bytes))


@dataclass(frozen=True)
class Entry:
    """One clip in the spool. position: 0-based index among pending clips (-1 while playing)."""

    segment_id: str
    position: int
    duration_s: float
    mode: str
    state: str
    request_id: str | None = None
    format: str | None = None
    sample_rate: int | None = None
    channels: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    payload_bytes: int = 0
    created: float = 0.0
    replays: int = 0
    interrupt: bool = False  # a play_now clip whose cut has not happened yet

    def ack(self, queued_ahead_s: float = 0.0) -> dict[str, Any]:
        return {"segment_id": self.segment_id, "position": self.position, "duration_s": round(self.duration_s, 6),
                "mode": self.mode, "queued_ahead_s": round(queued_ahead_s, 3)}


@dataclass(frozen=True)
class AddResult:
    entry: Entry
    ack: dict[str, Any]
    duplicate: bool


@dataclass
class _Totals:
    """Clips, seconds and payload bytes of one state, kept beside the table so no read scans the queue."""

    clips: int = 0
    seconds: float = 0.0
    bytes: int = 0

    def add(self, clips: int, seconds: float, nbytes: int) -> None:
        self.clips += clips
        self.seconds += seconds
        self.bytes += nbytes


_COLS = ("segment_id, request_id, mode, state, pos, duration_s, format, sample_rate, channels, meta, "
         "payload_bytes, created, replays, interrupt")


class Spool:
    """Thread-safe durable queue. `path` is a directory (the database is `path/spool.sqlite3`)."""

    def __init__(self, path: str | os.PathLike[str], limits: SpoolLimits | Any | None = None, *,
                 audio_rate: int = 48_000, audio_channels: int = 2, recover: bool = True,
                 reserve_bytes: int = RESERVE_BYTES) -> None:
        self.dir = Path(path)
        self.dir.mkdir(parents=True, exist_ok=True)
        if limits is None:
            limits = SpoolLimits()
        elif not isinstance(limits, SpoolLimits):
            limits = SpoolLimits.from_settings(limits)
        self.limits = limits
        self.audio_rate, self.audio_channels = audio_rate, audio_channels
        self.db_path = self.dir / DB_NAME
        self._lock = threading.RLock()
        self._lockfile = open(self.dir / "spool.lock", "a+")
        try:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise SpoolLocked(self.dir) from None
        self._reserve = DiskReserve(self.dir / RESERVE_NAME, reserve_bytes)
        self._deltas: list[tuple[str, int, float, int]] = []  # totals changes of the open transaction
        # For `untake`: the clips whose play_now cut each take cleared (itself included when it was one), by the
        # taken clip; a take undone gives exactly those their cut back (kept in memory: recovery needs none).
        self._took_cuts: dict[str, list[str]] = {}
        try:
            # quarantined: (where the unreadable file went, why), when this open moved one aside
            self._db, self.quarantined = open_or_quarantine(self.db_path, self._connect, self._reserve)
        except BaseException:
            self._unlock()
            raise
        self._totals = {"pending": _Totals(), "playing": _Totals()}
        for state, n, secs, nbytes in self._db.execute(
                "SELECT state, COUNT(*), COALESCE(SUM(duration_s), 0), COALESCE(SUM(payload_bytes), 0) "
                "FROM clips GROUP BY state"):
            self._totals[state].add(n, secs, nbytes)
        self.ensure_reserve()
        self.recovered: list[str] = []
        # The 'playing' clips of the last life are not recovered yet (a full disk refused the write at open): the first
        # take recovers them, so they air first in this life once the disk has room, as at any restart.
        self._recover_before_take = False
        if recover:
            try:
                self.recovered = self.recover()
            except SpoolDiskFull:  # the clips stay 'playing' until the first take_next with room
                self._recover_before_take = True

    @classmethod
    def from_settings(cls, queue: QueueSettings, encoder: EncoderSettings, storage: StorageSettings,
                      **kw: Any) -> "Spool":
        """The spool of these sections (`queue` with its {state_dir} expanded: Settings.expanded)."""
        return cls(queue.spool_dir, SpoolLimits.from_settings(queue), audio_rate=encoder.audio_rate,
                   audio_channels=encoder.audio_channels, reserve_bytes=storage.spool_reserve_bytes, **kw)

    # -- opening (an unreadable file or a full disk: queue/faults.py) -----------------------------------------
    def _connect(self) -> sqlite3.Connection:
        """Connect, set up and check the file: a file that is not a sound SQLite spool raises DatabaseError."""
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        db = sqlite3.connect(str(self.db_path), isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only effective on a new file; frees deleted payloads
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.DatabaseError(f"SQLite refused WAL mode (got {mode})")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA journal_size_limit=67108864")
            check = db.execute("PRAGMA quick_check").fetchall()
            if check != [("ok",)]:
                raise sqlite3.DatabaseError("quick_check: " + "; ".join(str(r[0]) for r in check[:3]))
            missing = {"clips", "requests", "counters", "streams", "stream_parts"} - {
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if missing:  # a new file (no writes at all when the schema is there: opening needs no free space)
                db.executescript(_SCHEMA)
            elif db.execute("SELECT 1 FROM sqlite_master WHERE name='clips_order' "
                            "AND sql LIKE '%seq%'").fetchone() is None:
                db.executescript("DROP INDEX IF EXISTS clips_order; "
                                 "CREATE INDEX clips_order ON clips(state, pos, seq);")
            fsync_dir(self.dir)
            return db
        except BaseException:
            db.close()
            raise

    def _unlock(self) -> None:
        try:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_UN)
        finally:
            self._lockfile.close()

    # -- disk space (the reserve: queue/faults.py) ---------------------------------------------------------
    def ensure_reserve(self) -> bool:
        """(Re)create the reserve file when the disk has room for it; True when it is in place."""
        return self._reserve.ensure()

    @property
    def reserve_released(self) -> bool:
        """The reserve was spent on a full disk and is not back yet."""
        return self._reserve.released

    # -- plumbing ----------------------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE .. COMMIT under the lock; the totals follow only a committed change."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._deltas.clear()
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._deltas.clear()
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            for state, n, secs, nbytes in self._deltas:
                self._totals[state].add(n, secs, nbytes)
            self._deltas.clear()

    def _move(self, db: sqlite3.Connection, where: str, args: tuple, *, to: str | None) -> int:
        """Delete (to=None) or re-state the clips matching `where`, recording the totals' change."""
        moved = db.execute(f"SELECT state, COUNT(*), COALESCE(SUM(duration_s), 0), COALESCE(SUM(payload_bytes), 0) "
                           f"FROM clips WHERE {where} GROUP BY state", args).fetchall()
        for state, n, secs, nbytes in moved:
            self._deltas.append((state, -n, -secs, -nbytes))
            if to is not None:
                self._deltas.append((to, n, secs, nbytes))
        return sum(r[1] for r in moved)

    def _next_counter(self, db: sqlite3.Connection, name: str) -> int:
        db.execute("INSERT INTO counters(name, value) VALUES (?, 1) "
                   "ON CONFLICT(name) DO UPDATE SET value = value + 1", (name,))
        return db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]

    def _entry(self, row: tuple, position: int) -> Entry:
        (sid, rid, mode, state, _pos, dur, fmt, rate, ch, meta, nbytes, created, replays, interrupt) = row
        return Entry(segment_id=sid, position=position, duration_s=dur, mode=mode, state=state, request_id=rid,
                     format=fmt, sample_rate=rate, channels=ch, meta=json.loads(meta or "{}"),
                     payload_bytes=nbytes, created=created, replays=replays, interrupt=bool(interrupt))

    def _pending_rows(self, db: sqlite3.Connection, limit: int = -1) -> list[tuple]:
        return db.execute(f"SELECT {_COLS} FROM clips WHERE state = 'pending' ORDER BY pos, seq LIMIT ?",
                          (limit,)).fetchall()

    def _renumber(self, db: sqlite3.Connection, head: Sequence[str] = ()) -> None:
        """Spread the pending clips GAP apart again, `head` first, the rest in their order."""
        ids = [r[0] for r in db.execute("SELECT segment_id FROM clips WHERE state='pending' ORDER BY pos, seq")]
        first = set(head)
        order = list(head) + [s for s in ids if s not in first]
        db.executemany("UPDATE clips SET pos = ? WHERE segment_id = ?", [(i * GAP, s) for i, s in enumerate(order)])

    def _end(self, db: sqlite3.Connection, which: str, where: str = "") -> int | None:
        return db.execute(f"SELECT {which}(pos) FROM clips WHERE state='pending'{where}").fetchone()[0]

    def _new_pos(self, db: sqlite3.Connection, mode: str) -> tuple[int, int]:
        """(pos, 0-based index) for a new pending clip, reading only the ends of the queue."""
        if mode == "enqueue":
            last = self._end(db, "MAX")
            return (0 if last is None else last + GAP), self._totals["pending"].clips
        if mode == "play_now":
            first = self._end(db, "MIN")
            return (0 if first is None else first - GAP), 0
        # insert: after the leading run of priority clips (play_now / earlier inserts / recovered)
        for _ in range(2):
            rest = self._end(db, "MIN", " AND priority=0")
            lead = self._end(db, "MAX", " AND priority=1" + ("" if rest is None else f" AND pos < {int(rest)}"))
            if rest is None:
                pos = 0 if lead is None else lead + GAP
            elif lead is None:
                pos = rest - GAP
            elif rest - lead >= 2:
                pos = (lead + rest) // 2
            else:  # this gap has been halved away: spread the queue out once and look again
                self._renumber(db)
                continue
            index = db.execute("SELECT COUNT(*) FROM clips WHERE state='pending' AND pos < ?", (pos,)).fetchone()[0]
            return pos, index
        raise SpoolError("internal", "no position left after renumbering the queue")

    def _reclaim(self) -> None:
        """Give deleted payloads' pages back to the file system (outside any transaction)."""
        with self._lock:
            try:
                free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
                if free > 256:
                    # executescript steps the pragma to the end; execute() would free a single page
                    self._db.executescript("PRAGMA incremental_vacuum;")
            except sqlite3.OperationalError as e:
                if not is_disk_full(e):  # freeing pages can wait for room in the WAL
                    raise

    # -- writing -----------------------------------------------------------------------------------
    def lookup_request(self, request_id: str) -> dict[str, Any] | None:
        """The original ack of an earlier request with this id, or None."""
        with self._lock:
            row = self._db.execute("SELECT ack FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def add(self, payload: bytes, meta: dict[str, Any] | None = None, mode: Mode = "enqueue",
            request_id: str | None = None, duration_s: float = 0.0, *, format: str | None = None,
            sample_rate: int | None = None, channels: int | None = None) -> Entry:
        """Persist a clip (committed and fsynced when this returns). A repeated request_id returns the first ack."""
        return self.add_ex(payload, meta, mode, request_id, duration_s, format=format, sample_rate=sample_rate,
                           channels=channels).entry

    def add_ex(self, payload: bytes, meta: dict[str, Any] | None = None, mode: Mode = "enqueue",
               request_id: str | None = None, duration_s: float = 0.0, *, format: str | None = None,
               sample_rate: int | None = None, channels: int | None = None) -> AddResult:
        """add() that also tells whether the request was a duplicate and returns the ack dict to send.

        A full disk raises SpoolDiskFull (`disk_full`): the reserve is kept for clips already acknowledged.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not math.isfinite(duration_s) or duration_s < 0:
            raise ValueError(f"duration_s must be finite and >= 0, got {duration_s}")
        nbytes = len(payload)
        lim = self.limits
        if nbytes > lim.max_spool_bytes:
            raise SpoolError("oversize", f"payload of {nbytes} bytes can never fit the spool (max_spool_bytes {lim.max_spool_bytes})")
        with refusing_full_disk(self.dir):
            return self._add(payload, meta, mode, request_id, duration_s, format, sample_rate, channels)

    def _add(self, payload: bytes, meta: dict[str, Any] | None, mode: str, request_id: str | None,
             duration_s: float, format: str | None, sample_rate: int | None, channels: int | None,
             stream: tuple[float | None, str] | None = None) -> AddResult:
        nbytes = len(payload)
        lim = self.limits
        with self._tx() as db:
            if request_id is not None:
                row = db.execute("SELECT ack FROM requests WHERE request_id = ?", (request_id,)).fetchone()
                if row:
                    ack = json.loads(row[0])
                    entry = Entry(segment_id=ack["segment_id"], position=ack["position"], duration_s=ack["duration_s"],
                                  mode=ack["mode"], state="duplicate", request_id=request_id)
                    return AddResult(entry, ack, True)
            pend, play = self._totals["pending"], self._totals["playing"]
            clips, secs, used = pend.clips + play.clips, pend.seconds + play.seconds, pend.bytes + play.bytes
            if clips + 1 > lim.max_clips:
                raise SpoolError("queue_full", f"queue holds {clips} clips, limit {lim.max_clips}")
            if secs + duration_s > lim.max_queued_seconds:
                raise SpoolError("queue_full", f"queue holds {secs:.1f} s, this clip {duration_s:.1f} s, limit {lim.max_queued_seconds:g} s")
            if used + nbytes > lim.max_spool_bytes:
                raise SpoolError("queue_full", f"spool holds {used} bytes, this clip {nbytes}, limit {lim.max_spool_bytes}")

            pos, index = self._new_pos(db, mode)
            if mode == "enqueue":
                ahead = pend.seconds
            else:
                ahead = db.execute("SELECT COALESCE(SUM(duration_s), 0) FROM clips WHERE state='pending' AND pos < ?",
                                   (pos,)).fetchone()[0]
            sid = uuid.uuid4().hex[:16]
            created = time.time()
            db.execute(
                "INSERT INTO clips(segment_id, request_id, mode, state, pos, priority, interrupt, duration_s, format, "
                "sample_rate, channels, meta, payload_bytes, payload, created) "
                "VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, request_id, mode, pos, int(mode != "enqueue"), int(mode == "play_now"), float(duration_s),
                 format, sample_rate, channels, json.dumps(meta or {}), nbytes, sqlite3.Binary(payload), created))
            self._deltas.append(("pending", 1, float(duration_s), nbytes))
            if stream is not None:  # (declared seconds, peer): its audio arrives as parts (append_stream)
                db.execute("INSERT INTO streams(segment_id, state, next_seq, declared_s, peer, opened) "
                           "VALUES (?, 'open', 0, ?, ?, ?)", (sid, stream[0], stream[1], created))
            entry = Entry(segment_id=sid, position=index, duration_s=float(duration_s), mode=mode, state="pending",
                          request_id=request_id, format=format, sample_rate=sample_rate, channels=channels,
                          meta=dict(meta or {}), payload_bytes=nbytes, created=created, interrupt=mode == "play_now")
            ack = entry.ack(ahead)
            if request_id is not None:
                db.execute("INSERT INTO requests(request_id, ack, created) VALUES (?, ?, ?)",
                           (request_id, json.dumps(ack), created))
                # ids past the memory are forgotten once their clip has left the spool: a clip still queued keeps its
                # id (its UNIQUE request_id would turn a resend into an IntegrityError, `internal`)
                db.execute("DELETE FROM requests WHERE rowid <= (SELECT MAX(rowid) FROM requests) - ? AND NOT EXISTS "
                           "(SELECT 1 FROM clips WHERE clips.request_id = requests.request_id)", (REQUEST_MEMORY,))
        return AddResult(entry, ack, False)

    # -- streamed clips (queue/streams.py keeps the live side: decoding, limits, timeouts) -----------------
    def open_stream(self, meta: dict[str, Any] | None, mode: Mode, request_id: str | None, *, format: str | None,
                    sample_rate: int | None, channels: int | None, declared_s: float | None,
                    peer: str = "") -> AddResult:
        """A clip whose audio will arrive in parts: queued now (an empty payload, 0 s), in state 'open'."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with refusing_full_disk(self.dir):
            return self._add(b"", meta, mode, request_id, 0.0, format, sample_rate, channels,
                             stream=(declared_s, peer))

    def append_stream(self, segment_id: str, seq: int, data: bytes, added_s: float) -> None:
        """Store part `seq` of an open stream, committed (fsynced) when this returns; the clip grows by `added_s`
        seconds and len(data) bytes. SpoolError: `unknown_stream`, `stream_closed`, `sequence_gap`, `queue_full`."""
        nbytes = len(data)
        lim = self.limits
        with refusing_full_disk(self.dir), self._tx() as db:
            row = db.execute("SELECT s.state, s.next_seq, c.state FROM streams s JOIN clips c USING (segment_id) "
                             "WHERE segment_id=?", (segment_id,)).fetchone()
            if row is None:
                raise SpoolError("unknown_stream", f"no open stream {segment_id[:64]!r}", "segment_id")
            if row[0] != "open":
                raise SpoolError("stream_closed", f"stream {segment_id[:64]!r} is {row[0]}", "segment_id")
            if seq != row[1]:
                raise SpoolError("sequence_gap", f"expected seq {row[1]}, got {seq}", "seq")
            pend, play = self._totals["pending"], self._totals["playing"]
            secs, used = pend.seconds + play.seconds, pend.bytes + play.bytes
            if secs + added_s > lim.max_queued_seconds:
                raise SpoolError("queue_full", f"queue holds {secs:.1f} s, limit {lim.max_queued_seconds:g} s")
            if used + nbytes > lim.max_spool_bytes:
                raise SpoolError("queue_full", f"spool holds {used} bytes, limit {lim.max_spool_bytes}")
            db.execute("INSERT INTO stream_parts(segment_id, seq, data) VALUES (?, ?, ?)",
                       (segment_id, seq, sqlite3.Binary(data)))
            db.execute("UPDATE streams SET next_seq=next_seq+1 WHERE segment_id=?", (segment_id,))
            db.execute("UPDATE clips SET duration_s=duration_s+?, payload_bytes=payload_bytes+? WHERE segment_id=?",
                       (float(added_s), nbytes, segment_id))
            self._deltas.append((row[2], 0, float(added_s), nbytes))

    def end_stream(self, segment_id: str, state: Literal["closed", "cut"], added_s: float = 0.0) -> bool:
        """An open stream is complete ('closed') or given up on ('cut': its producer went silent); the clip grows by
        `added_s` (the decoder's tail). False when it was not open. A state change of an acknowledged clip."""
        def end() -> bool:
            with self._tx() as db:
                row = db.execute("SELECT c.state FROM streams s JOIN clips c USING (segment_id) "
                                 "WHERE segment_id=? AND s.state='open'", (segment_id,)).fetchone()
                if row is None:
                    return False
                db.execute("UPDATE streams SET state=? WHERE segment_id=?", (state, segment_id))
                if added_s:
                    db.execute("UPDATE clips SET duration_s=duration_s+? WHERE segment_id=?", (float(added_s), segment_id))
                    self._deltas.append((row[0], 0, float(added_s), 0))
            return True
        return self._reserve.state_change(end)

    def stream_rows(self) -> list[dict[str, Any]]:
        """Every streamed clip still in the spool (open, closed or cut), oldest first: what a restart rebuilds."""
        with self._lock:
            rows = self._db.execute(
                "SELECT s.segment_id, s.state, s.next_seq, s.declared_s, s.peer, s.opened, c.format, c.sample_rate, "
                "c.channels FROM streams s JOIN clips c USING (segment_id) ORDER BY c.seq").fetchall()
        keys = ("segment_id", "state", "next_seq", "declared_s", "peer", "opened", "format", "sample_rate", "channels")
        return [dict(zip(keys, r)) for r in rows]

    def stream_parts(self, segment_id: str) -> list[bytes]:
        """A streamed clip's stored parts, in sequence order."""
        with self._lock:
            return [bytes(r[0]) for r in self._db.execute(
                "SELECT data FROM stream_parts WHERE segment_id=? ORDER BY seq", (segment_id,))]

    def _recover_late(self) -> None:
        """The recovery a full disk refused at open, before anything of this life is taken (see __init__)."""
        if self._recover_before_take:
            with self._lock:
                if self._recover_before_take:
                    self.recovered = self.recover()
                    self._recover_before_take = False

    def peek(self) -> Entry | None:
        """The clip take_next() would return, without taking it (for decoding ahead)."""
        try:
            self._recover_late()
        except SpoolDiskFull:  # still no room: the head is the pending one take_next would refuse to take anyway
            pass
        with self._lock:
            rows = self._pending_rows(self._db, 1)
        return self._entry(rows[0], 0) if rows else None

    def take_next(self) -> Entry | None:
        """Mark the head clip 'playing' and return it; None when nothing is pending.

        Call it when the clip starts on air: it also clears every pending interrupt flag, because the cut
        those play_now clips asked for is happening now.
        """
        self._recover_late()  # SpoolDiskFull while the disk is still full: nothing is taken

        def take() -> Entry | None:
            with self._tx() as db:
                rows = self._pending_rows(db, 1)
                if not rows:
                    return None
                sid = rows[0][0]
                cuts = [r[0] for r in db.execute("SELECT segment_id FROM clips WHERE state='pending' AND interrupt=1")]
                taken = self._next_counter(db, "taken")
                self._move(db, "segment_id=?", (sid,), to="playing")
                db.execute("UPDATE clips SET state='playing', taken_seq=?, interrupt=0 WHERE segment_id=?",
                           (taken, sid))
                db.execute("UPDATE clips SET interrupt=0 WHERE state='pending' AND interrupt=1")
                row = list(rows[0])
                row[3] = "playing"
                row[-1] = 0
            self._took_cuts[sid] = cuts
            return self._entry(tuple(row), -1)

        return self._reserve.state_change(take)

    def _to_head(self, db: sqlite3.Connection, segment_id: str, where: str, sets: str) -> bool:
        """Move one clip matching `where` to pending at position `pos` (computed by the caller's SQL in `sets`)."""
        n = self._move(db, f"segment_id=? AND {where}", (segment_id,), to="pending")
        if n:
            db.execute(f"UPDATE clips SET state='pending', {sets} WHERE segment_id=?", (segment_id,))
        return n > 0

    def untake(self, segment_id: str) -> bool:
        """A clip taken for the render-ahead buffer but not on air goes back to the head of the queue (a re-plan
        discarded the buffer); the play_now cuts its take cleared are asked for again (its own, if it was a play_now
        clip waiting for its cut, and those of the play_now clips waiting behind it), and no other: a play_now clip
        taken after another one ended, not by a cut, goes back without one. A clip cancelled meanwhile (silenced in
        the buffer: playout/replan.py) is dropped instead, never taken again. Undo in reverse take order."""
        def untake() -> bool:
            with self._tx() as db:
                cuts = self._took_cuts.get(segment_id)
                cancelled = "segment_id=? AND state='playing' AND cancel_requested=1"
                if self._move(db, cancelled, (segment_id,), to=None):
                    db.execute(f"DELETE FROM clips WHERE {cancelled}", (segment_id,))
                    back = False
                else:
                    head = self._end(db, "MIN")
                    pos = 0 if head is None else head - GAP
                    own = "(mode='play_now')" if cuts is None else str(int(segment_id in cuts))  # None: taken before
                    if not self._to_head(db, segment_id, "state='playing'", f"pos={int(pos)}, interrupt={own}"):
                        return False
                    back = True
                db.executemany("UPDATE clips SET interrupt=1 WHERE segment_id=? AND state='pending'",
                               [(sid,) for sid in cuts or () if sid != segment_id])
            self._took_cuts.pop(segment_id, None)
            return back
        return self._reserve.state_change(untake)

    def requeue(self, segment_id: str) -> bool:
        """The playing clip was cut by play_now: back to pending, to replay from its start right after the
        waiting play_now clips (before everything else). Its row is never deleted in between: a crash replays it."""
        def requeue() -> bool:
            with self._tx() as db:
                for _ in range(2):
                    last_now = self._end(db, "MAX", " AND interrupt=1")
                    rest = self._end(db, "MIN", "" if last_now is None else f" AND pos > {int(last_now)}")
                    if last_now is None:
                        pos = 0 if rest is None else rest - GAP
                    elif rest is None:
                        pos = last_now + GAP
                    elif rest - last_now >= 2:
                        pos = (last_now + rest) // 2
                    else:  # no gap left after the play_now clips: spread the queue out once and look again
                        self._renumber(db)
                        continue
                    return self._to_head(db, segment_id, "state='playing' AND cancel_requested=0",
                                         f"pos={int(pos)}, priority=1, interrupt=0")
            raise SpoolError("internal", "no position left after renumbering the queue")

        return self._reserve.state_change(requeue)

    def unrequeue(self, segment_id: str) -> bool:
        """Undo requeue (a re-plan rewound past the play_now cut): the clip is playing again."""
        def unrequeue() -> bool:
            with self._tx() as db:
                n = self._move(db, "segment_id=? AND state='pending'", (segment_id,), to="playing")
                if n:
                    db.execute("UPDATE clips SET state='playing' WHERE segment_id=?", (segment_id,))
            return n > 0
        return self._reserve.state_change(unrequeue)

    def interrupt_pending(self) -> bool:
        """True when the playing clip must be cut at the next chunk boundary (a play_now is waiting, or it was cancelled)."""
        with self._lock:
            return self._db.execute(
                "SELECT EXISTS(SELECT 1 FROM clips WHERE (state='pending' AND interrupt=1) "
                "OR (state='playing' AND cancel_requested=1))").fetchone()[0] == 1

    def is_cancel_requested(self, segment_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM clips WHERE segment_id=?", (segment_id,)).fetchone()
        return bool(row and row[0])

    def _remove(self, segment_id: str) -> bool:
        def remove() -> int:
            with self._tx() as db:
                # Only a playing clip: one requeued by play_now (pending again) is not finished.
                n = self._move(db, "segment_id=? AND state='playing'", (segment_id,), to=None)
                db.execute("DELETE FROM clips WHERE segment_id=? AND state='playing'", (segment_id,))
            return n

        n = self._reserve.state_change(remove)
        if n:
            self._took_cuts.pop(segment_id, None)
            self._reclaim()
        return n > 0

    def mark_finished(self, segment_id: str) -> bool:
        """The clip played to its end: delete it (and its bytes). It never replays."""
        return self._remove(segment_id)

    def mark_interrupted(self, segment_id: str) -> bool:
        """The clip's cut aired (cancel) or it could not be played: delete it. It is not replayed. A clip cut by
        play_now is requeued instead (requeue), and this leaves it alone."""
        return self._remove(segment_id)

    def cancel(self, segment_id: str) -> Literal["pending", "playing"] | None:
        """Drop a pending clip ('pending'), or flag the playing clip for an interrupt ('playing'); None if unknown."""
        def cancel() -> Literal["pending", "playing"] | None:
            with self._tx() as db:
                row = db.execute("SELECT state FROM clips WHERE segment_id=?", (segment_id,)).fetchone()
                if row is None:
                    return None
                if row[0] == "playing":
                    db.execute("UPDATE clips SET cancel_requested=1 WHERE segment_id=?", (segment_id,))
                    return "playing"
                self._move(db, "segment_id=?", (segment_id,), to=None)
                db.execute("DELETE FROM clips WHERE segment_id=?", (segment_id,))
                return "pending"

        was = self._reserve.state_change(cancel)
        if was == "pending":
            self._took_cuts.pop(segment_id, None)
            self._reclaim()
        return was

    def move(self, segment_id: str, *, before: str | None = None, after: str | None = None,
             to: int | None = None) -> tuple[int, int]:
        """Move one pending clip before or after another pending clip, or to index `to` (0 = next to air; past the
        end = last). Returns (old index, new index). One row is written unless the gap between the new neighbours
        is used up (then the queue is renumbered once, in the same transaction).

        The moved clip takes its place: it counts as an insert (later inserts go after it) exactly when every clip
        before it is one, and a play_now cut it was still waiting for is withdrawn. Raises SpoolError `not_found`
        (an unknown id) or `not_pending` (a clip on air or rendered ahead), naming the field."""
        if sum(x is not None for x in (before, after, to)) != 1:
            raise ValueError("give exactly one of before, after, to")

        def move() -> tuple[int, int]:
            with self._tx() as db:
                for field_name, sid in (("segment_id", segment_id), ("before", before), ("after", after)):
                    if sid is None:
                        continue
                    row = db.execute("SELECT state FROM clips WHERE segment_id=?", (sid,)).fetchone()
                    if row is None:
                        raise SpoolError("not_found", f"no clip {sid[:64]!r} in the queue", field_name)
                    if row[0] != "pending":
                        raise SpoolError("not_pending", f"clip {sid[:64]!r} is on air or rendered ahead; only "
                                                        f"pending clips can be moved or moved around", field_name)
                rows = db.execute("SELECT segment_id, pos, priority FROM clips WHERE state='pending' "
                                  "ORDER BY pos, seq").fetchall()
                order = [r[0] for r in rows]
                old = order.index(segment_id)
                rest = [r for r in rows if r[0] != segment_id]
                ids = [r[0] for r in rest]
                if before is not None or after is not None:
                    anchor = before if before is not None else after
                    if anchor == segment_id:
                        raise SpoolError("bad_request", "a clip cannot move relative to itself",
                                         "before" if before is not None else "after")
                    new = ids.index(anchor) + (after is not None)
                else:
                    new = min(int(to or 0), len(rest))  # `to` is given: MoveArgs needs exactly one target
                if new == old:
                    return old, new
                lo = rest[new - 1][1] if new > 0 else None
                hi = rest[new][1] if new < len(rest) else None
                priority = int(all(r[2] for r in rest[:new]))
                db.execute("UPDATE clips SET priority=?, interrupt=0 WHERE segment_id=?", (priority, segment_id))
                if lo is not None and hi is not None and hi - lo < 2:  # no room between them: spread out once
                    db.executemany("UPDATE clips SET pos = ? WHERE segment_id = ?",
                                   [(i * GAP, s) for i, s in enumerate(ids[:new] + [segment_id] + ids[new:])])
                else:
                    pos = (hi or 0) - GAP if lo is None else lo + GAP if hi is None else (lo + hi) // 2
                    db.execute("UPDATE clips SET pos=? WHERE segment_id=?", (pos, segment_id))
            return old, new

        return self._reserve.state_change(move)

    def clear(self) -> list[str]:
        """Drop every pending clip (the playing one stays); returns their ids in queue order."""
        def clear() -> list[str]:
            with self._tx() as db:
                ids = [r[0] for r in db.execute(
                    "SELECT segment_id FROM clips WHERE state='pending' ORDER BY pos, seq")]
                self._move(db, "state='pending'", (), to=None)
                db.execute("DELETE FROM clips WHERE state='pending'")
            return ids

        ids = self._reserve.state_change(clear)
        for sid in ids:
            self._took_cuts.pop(sid, None)
        self._reclaim()
        return ids

    def recover(self) -> list[str]:
        """Put every 'playing' clip back at the head, in the order it was taken; returns their ids.

        Runs on open: a clip that was on air when the process died replays from its start. A clip cancelled
        while playing (its cut had not aired yet) is dropped instead: a cancelled clip never airs again.
        """
        def recover() -> list[str]:
            with self._tx() as db:
                self._move(db, "state='playing' AND cancel_requested=1", (), to=None)
                db.execute("DELETE FROM clips WHERE state='playing' AND cancel_requested=1")
                playing = [r[0] for r in db.execute(
                    "SELECT segment_id FROM clips WHERE state='playing' ORDER BY taken_seq, seq")]
                if not playing:
                    return []
                self._move(db, "state='playing'", (), to="pending")
                db.execute("UPDATE clips SET state='pending', priority=1, cancel_requested=0, replays=replays+1 "
                           "WHERE state='playing'")
                self._renumber(db, playing)
            return playing

        return self._reserve.state_change(recover)

    # -- reading -----------------------------------------------------------------------------------
    def pending(self, limit: int | None = None) -> list[Entry]:
        """Pending clips in play order; the first `limit` only when given (status reads just the head)."""
        with self._lock:
            rows = self._pending_rows(self._db, -1 if limit is None else int(limit))
        return [self._entry(r, i) for i, r in enumerate(rows)]

    def playing(self) -> list[Entry]:
        return self.view()[0]

    def view(self, limit: int | None = None) -> tuple[list[Entry], list[Entry]]:
        """(playing, pending) read together: a clip the timeline takes between two separate reads would be in
        both lists (status after a restart showed the replaying clip twice)."""
        with self._lock:
            playing = self._db.execute(f"SELECT {_COLS} FROM clips WHERE state='playing' ORDER BY taken_seq").fetchall()
            pending = self._pending_rows(self._db, -1 if limit is None else int(limit))
        return [self._entry(r, -1) for r in playing], [self._entry(r, i) for i, r in enumerate(pending)]

    def get(self, segment_id: str) -> Entry | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLS} FROM clips WHERE segment_id=?", (segment_id,)).fetchone()
            if row is None:
                return None
            if row[3] != "pending":
                return self._entry(row, -1)
            index = self._db.execute("SELECT COUNT(*) FROM clips WHERE state='pending' AND (pos < ? OR "
                                     "(pos = ? AND seq < (SELECT seq FROM clips WHERE segment_id=?)))",
                                     (row[4], row[4], segment_id)).fetchone()[0]
        return self._entry(row, index)

    def payload(self, segment_id: str) -> bytes:
        """The clip's bytes as received (a streamed clip's parts joined)."""
        with self._lock:
            row = self._db.execute("SELECT payload FROM clips WHERE segment_id=?", (segment_id,)).fetchone()
            if row is None:
                raise KeyError(segment_id)
            parts = self.stream_parts(segment_id)
        return bytes(row[0]) + b"".join(parts)

    def load_audio(self, entry: Entry | str) -> ClipAudio:
        """Decode the stored payload again (no clip-length limits: it was accepted already)."""
        e = self.get(entry) if isinstance(entry, str) else entry
        if e is None:
            raise KeyError(entry)
        return decode_audio(self.payload(e.segment_id), format=e.format, sample_rate=e.sample_rate,
                            channels=e.channels, rate=self.audio_rate, out_channels=self.audio_channels)

    def stats(self) -> dict[str, Any]:
        """Counts from the running totals (no scan of the queue) and the files' size on disk."""
        with self._lock:
            pend, play = self._totals["pending"], self._totals["playing"]
            clips, secs, used = pend.clips + play.clips, pend.seconds + play.seconds, pend.bytes + play.bytes
        files = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                files += os.path.getsize(str(self.db_path) + suffix)
            except OSError:
                pass
        return {"clips": clips, "pending": pend.clips, "playing": play.clips,
                "queued_seconds": round(secs, 3), "payload_bytes": used, "spool_bytes": files,
                "reserve_released": self.reserve_released,
                "limits": {"max_clips": self.limits.max_clips, "max_queued_seconds": self.limits.max_queued_seconds,
                           "max_spool_bytes": self.limits.max_spool_bytes}}

    def close(self) -> None:
        with self._lock:
            if self._lockfile.closed:
                return
            try:
                self._db.close()
            finally:
                self._unlock()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
