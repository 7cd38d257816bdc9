"""The durable queue of acknowledged clips: one SQLite file in WAL mode with synchronous=FULL.

Why SQLite: every change that touches several clips (insert, play_now, clear, recovery) is one atomic transaction,
a commit is durable once `COMMIT` returns (the WAL is fsynced; SQLite fsyncs the directory when it creates the WAL
and we fsync it once more after opening), and a crash at any instant leaves either the old or the new queue, never a
mix. The original payload bytes are stored (not decoded audio), so decoding at play time is reproducible and the spool
stays small. Order is an integer `pos` among pending clips; a clip being broadcast is in state 'playing'.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from flashtalk_live.errors import Rejection

Mode = Literal["enqueue", "insert", "play_now"]
MODES = ("enqueue", "insert", "play_now")
DB_NAME = "spool.sqlite3"
REQUEST_MEMORY = 10_000  # request ids remembered for de-duplication, finished clips included

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
CREATE INDEX IF NOT EXISTS clips_order ON clips(state, pos);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    ack TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class SpoolError(Rejection):
    """A spool operation failed; `code` is a protocol rejection code (queue_full, oversize, internal)."""


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
    def from_settings(cls, queue_settings: Any) -> "SpoolLimits":
        q = queue_settings
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


_COLS = ("segment_id, request_id, mode, state, pos, duration_s, format, sample_rate, channels, meta, "
         "payload_bytes, created, replays, interrupt")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Thread-safe durable queue. `path` is a directory (the database is `path/spool.sqlite3`)."""

    def __init__(self, path: str | os.PathLike[str], limits: SpoolLimits | Any | None = None, *,
                 audio_rate: int = 48_000, audio_channels: int = 2, recover: bool = True) -> None:
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
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        self._db = sqlite3.connect(str(self.db_path), isolation_level=None, check_same_thread=False, timeout=30.0)
        self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only effective on a new file; frees deleted payloads
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise SpoolError("internal", f"SQLite refused WAL mode on {self.db_path} (got {mode})")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA journal_size_limit=67108864")
        self._db.executescript(_SCHEMA)
        _fsync_dir(self.dir)
        self.recovered: list[str] = self.recover() if recover else []

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> "Spool":
        return cls(settings.path(settings.queue.spool_dir), SpoolLimits.from_settings(settings.queue),
                   audio_rate=settings.encoder.audio_rate, audio_channels=settings.encoder.audio_channels, **kw)

    # -- plumbing ----------------------------------------------------------------------------------
    def _tx(self):
        spool = self

        class _Tx:
            def __enter__(self_inner) -> sqlite3.Connection:
                spool._lock.acquire()
                try:
                    spool._db.execute("BEGIN IMMEDIATE")
                except BaseException:
                    spool._lock.release()
                    raise
                return spool._db

            def __exit__(self_inner, exc_type, exc, tb) -> None:
                try:
                    if exc_type is None:
                        spool._db.execute("COMMIT")
                    else:
                        spool._db.execute("ROLLBACK")
                finally:
                    spool._lock.release()

        return _Tx()

    def _next_counter(self, db: sqlite3.Connection, name: str) -> int:
        db.execute("INSERT INTO counters(name, value) VALUES (?, 1) "
                   "ON CONFLICT(name) DO UPDATE SET value = value + 1", (name,))
        return db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]

    def _entry(self, row: tuple, position: int) -> Entry:
        (sid, rid, mode, state, _pos, dur, fmt, rate, ch, meta, nbytes, created, replays, interrupt) = row
        return Entry(segment_id=sid, position=position, duration_s=dur, mode=mode, state=state, request_id=rid,
                     format=fmt, sample_rate=rate, channels=ch, meta=json.loads(meta or "{}"),
                     payload_bytes=nbytes, created=created, replays=replays, interrupt=bool(interrupt))

    def _pending_rows(self, db: sqlite3.Connection) -> list[tuple]:
        return db.execute(f"SELECT {_COLS} FROM clips WHERE state = 'pending' ORDER BY pos, seq").fetchall()

    def _renumber(self, db: sqlite3.Connection, ordered_ids: list[str]) -> None:
        db.executemany("UPDATE clips SET pos = ? WHERE segment_id = ?", [(i, s) for i, s in enumerate(ordered_ids)])

    def _reclaim(self) -> None:
        """Give deleted payloads' pages back to the file system (outside any transaction)."""
        with self._lock:
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            if free > 256:
                # executescript steps the pragma to the end; execute() would free a single page
                self._db.executescript("PRAGMA incremental_vacuum;")

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
        """add() that also tells whether the request was a duplicate and returns the ack dict to send."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not math.isfinite(duration_s) or duration_s < 0:
            raise ValueError(f"duration_s must be finite and >= 0, got {duration_s}")
        nbytes = len(payload)
        lim = self.limits
        if nbytes > lim.max_spool_bytes:
            raise SpoolError("oversize", f"payload of {nbytes} bytes can never fit the spool (max_spool_bytes {lim.max_spool_bytes})")
        with self._tx() as db:
            if request_id is not None:
                row = db.execute("SELECT ack FROM requests WHERE request_id = ?", (request_id,)).fetchone()
                if row:
                    ack = json.loads(row[0])
                    entry = Entry(segment_id=ack["segment_id"], position=ack["position"], duration_s=ack["duration_s"],
                                  mode=ack["mode"], state="duplicate", request_id=request_id)
                    return AddResult(entry, ack, True)
            clips, secs, used = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(duration_s), 0), COALESCE(SUM(payload_bytes), 0) FROM clips").fetchone()
            if clips + 1 > lim.max_clips:
                raise SpoolError("queue_full", f"queue holds {clips} clips, limit {lim.max_clips}")
            if secs + duration_s > lim.max_queued_seconds:
                raise SpoolError("queue_full", f"queue holds {secs:.1f} s, this clip {duration_s:.1f} s, limit {lim.max_queued_seconds:g} s")
            if used + nbytes > lim.max_spool_bytes:
                raise SpoolError("queue_full", f"spool holds {used} bytes, this clip {nbytes}, limit {lim.max_spool_bytes}")

            pending = self._pending_rows(db)
            order = [r[0] for r in pending]
            if mode == "enqueue":
                index = len(order)
            elif mode == "play_now":
                index = 0
            else:  # insert: after the leading run of priority clips (play_now / earlier inserts / recovered)
                prio = {r[0] for r in db.execute("SELECT segment_id FROM clips WHERE state='pending' AND priority=1")}
                index = 0
                while index < len(order) and order[index] in prio:
                    index += 1
            sid = uuid.uuid4().hex[:16]
            created = time.time()
            db.execute(
                "INSERT INTO clips(segment_id, request_id, mode, state, pos, priority, interrupt, duration_s, format, "
                "sample_rate, channels, meta, payload_bytes, payload, created) "
                "VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, request_id, mode, index, int(mode != "enqueue"), int(mode == "play_now"), float(duration_s),
                 format, sample_rate, channels, json.dumps(meta or {}), nbytes, sqlite3.Binary(payload), created))
            order.insert(index, sid)
            self._renumber(db, order)
            ahead = sum(r[5] for r in pending[:index])
            entry = Entry(segment_id=sid, position=index, duration_s=float(duration_s), mode=mode, state="pending",
                          request_id=request_id, format=format, sample_rate=sample_rate, channels=channels,
                          meta=dict(meta or {}), payload_bytes=nbytes, created=created, interrupt=mode == "play_now")
            ack = entry.ack(ahead)
            if request_id is not None:
                db.execute("INSERT INTO requests(request_id, ack, created) VALUES (?, ?, ?)",
                           (request_id, json.dumps(ack), created))
                db.execute("DELETE FROM requests WHERE rowid <= (SELECT MAX(rowid) FROM requests) - ?", (REQUEST_MEMORY,))
        return AddResult(entry, ack, False)

    def peek(self) -> Entry | None:
        """The clip take_next() would return, without taking it (for decoding ahead)."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM clips WHERE state='pending' ORDER BY pos, seq LIMIT 1").fetchall()
        return self._entry(rows[0], 0) if rows else None

    def take_next(self) -> Entry | None:
        """Mark the head clip 'playing' and return it; None when nothing is pending.

        Call it when the clip starts on air: it also clears every pending interrupt flag, because the cut
        those play_now clips asked for is happening now.
        """
        with self._tx() as db:
            rows = db.execute(f"SELECT {_COLS} FROM clips WHERE state='pending' ORDER BY pos, seq LIMIT 1").fetchall()
            if not rows:
                return None
            sid = rows[0][0]
            taken = self._next_counter(db, "taken")
            db.execute("UPDATE clips SET state='playing', pos=-1, taken_seq=?, interrupt=0 WHERE segment_id=?", (taken, sid))
            db.execute("UPDATE clips SET interrupt=0 WHERE state='pending' AND interrupt=1")
            rest = [r[0] for r in self._pending_rows(db)]
            self._renumber(db, rest)
            row = list(rows[0])
            row[3] = "playing"
            row[-1] = 0
        return self._entry(tuple(row), -1)

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

    def _remove(self, segment_id: str, state: str | None = None) -> bool:
        with self._tx() as db:
            q = "DELETE FROM clips WHERE segment_id=?" + (" AND state=?" if state else "")
            n = db.execute(q, (segment_id, state) if state else (segment_id,)).rowcount
            if n:
                self._renumber(db, [r[0] for r in self._pending_rows(db)])
        if n:
            self._reclaim()
        return n > 0

    def mark_finished(self, segment_id: str) -> bool:
        """The clip played to its end: delete it (and its bytes). It never replays."""
        return self._remove(segment_id)

    def mark_interrupted(self, segment_id: str) -> bool:
        """The clip was cut (play_now or cancel): delete it. It is not replayed."""
        return self._remove(segment_id)

    def cancel(self, segment_id: str) -> Literal["pending", "playing"] | None:
        """Drop a pending clip ('pending'), or flag the playing clip for an interrupt ('playing'); None if unknown."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM clips WHERE segment_id=?", (segment_id,)).fetchone()
            if row is None:
                return None
            if row[0] == "playing":
                db.execute("UPDATE clips SET cancel_requested=1 WHERE segment_id=?", (segment_id,))
                return "playing"
            db.execute("DELETE FROM clips WHERE segment_id=?", (segment_id,))
            self._renumber(db, [r[0] for r in self._pending_rows(db)])
        self._reclaim()
        return "pending"

    def clear(self) -> list[str]:
        """Drop every pending clip (the playing one stays); returns their ids in queue order."""
        with self._tx() as db:
            ids = [r[0] for r in self._pending_rows(db)]
            db.execute("DELETE FROM clips WHERE state='pending'")
        self._reclaim()
        return ids

    def recover(self) -> list[str]:
        """Put every 'playing' clip back at the head, in the order it was taken; returns their ids.

        Runs on open: a clip that was on air when the process died replays from its start.
        """
        with self._tx() as db:
            playing = [r[0] for r in db.execute(
                "SELECT segment_id FROM clips WHERE state='playing' ORDER BY taken_seq, seq")]
            if not playing:
                return []
            db.execute("UPDATE clips SET state='pending', priority=1, cancel_requested=0, replays=replays+1 "
                       "WHERE state='playing'")
            rest = [r[0] for r in self._pending_rows(db) if r[0] not in set(playing)]
            self._renumber(db, playing + rest)
        return playing

    # -- reading -----------------------------------------------------------------------------------
    def pending(self) -> list[Entry]:
        with self._lock:
            rows = self._pending_rows(self._db)
        return [self._entry(r, i) for i, r in enumerate(rows)]

    def playing(self) -> list[Entry]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM clips WHERE state='playing' ORDER BY taken_seq").fetchall()
        return [self._entry(r, -1) for r in rows]

    def get(self, segment_id: str) -> Entry | None:
        with self._lock:
            rows = self._pending_rows(self._db)
            for i, r in enumerate(rows):
                if r[0] == segment_id:
                    return self._entry(r, i)
            row = self._db.execute(f"SELECT {_COLS} FROM clips WHERE segment_id=?", (segment_id,)).fetchone()
        return self._entry(row, -1) if row else None

    def payload(self, segment_id: str) -> bytes:
        with self._lock:
            row = self._db.execute("SELECT payload FROM clips WHERE segment_id=?", (segment_id,)).fetchone()
        if row is None:
            raise KeyError(segment_id)
        return bytes(row[0])

    def load_audio(self, entry: Entry | str):
        """Decode the stored payload again (no clip-length limits: it was accepted already) -> ClipAudio."""
        from flashtalk_live.ingest.audio import decode_audio

        e = self.get(entry) if isinstance(entry, str) else entry
        if e is None:
            raise KeyError(entry)
        return decode_audio(self.payload(e.segment_id), format=e.format, sample_rate=e.sample_rate,
                            channels=e.channels, rate=self.audio_rate, out_channels=self.audio_channels)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            clips, secs, used = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(duration_s), 0), COALESCE(SUM(payload_bytes), 0) FROM clips").fetchone()
            n_playing = self._db.execute("SELECT COUNT(*) FROM clips WHERE state='playing'").fetchone()[0]
        files = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                files += os.path.getsize(str(self.db_path) + suffix)
            except OSError:
                pass
        return {"clips": clips, "pending": clips - n_playing, "playing": n_playing,
                "queued_seconds": round(secs, 3), "payload_bytes": used, "spool_bytes": files,
                "limits": {"max_clips": self.limits.max_clips, "max_queued_seconds": self.limits.max_queued_seconds,
                           "max_spool_bytes": self.limits.max_spool_bytes}}

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            finally:
                try:
                    fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_UN)
                finally:
                    self._lockfile.close()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
