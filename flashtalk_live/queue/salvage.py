"""Salvage: the clips still readable in a spool file the daemon moved aside, queued again as new enqueues.

The file is untrusted: it was unreadable once, and whoever can write the state directory can craft one. So:
* it is opened read-only and immutable through a URI built by `pathlib.Path.as_uri()` (a `#`, `%` or `?` in the path
  is escaped, never read as part of the URI), so no other file is opened or created; except that a file moved aside
  with its write-ahead log (quarantine moves the -wal along: after a crash it holds the last commits, which an
  immutable open ignores) is linked (or copied) with its -wal into a private temporary folder beside it and opened
  read-only there, so the WAL's clips are read too and the files moved aside are never written;
* rows are walked by the table's own order (`seq > last ORDER BY seq LIMIT 1`), never by counting up to a number
  found in the file; where a damaged page stops the walk, the next few thousand sequence numbers are probed, no more;
* every column's type is checked in SQL (`typeof()`) before its value is read: a payload that is not a BLOB (an
  INTEGER 300000000 would become 300 MB of zeros) or larger than the spool could hold is never read;
* each clip is checked exactly as an `enqueue` would be: the payload decoded (its duration is the decoded one, not
  the file's), the clip limits, the meta (a JSON object within the header size and nesting limits);
* rows are read one payload at a time and queued as they pass; a bad row is skipped and reported, never the end;
* a clip without a request id gets one made from its content and its segment id (`salvage:<sha256>`), so salvaging
  twice queues it once, and two clips of the same content (pushed twice without an id) are both queued;
* a streamed clip (its row holds no payload) is its stored parts 0, 1, 2, ... joined (each type-checked, together
  within the spool's size), queued as a whole clip: every acknowledged part is saved, open or closed.
Order: the clips that were on air first (in the order they were taken), then the pending ones by position.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from flashtalk_live.errors import Rejection
from flashtalk_live.audio import decode_audio
from flashtalk_live.ingest.limits import json_depth
from flashtalk_live.ingest.protocol import MAX_HEADER_BYTES
from flashtalk_live.queue.spool import Spool

PROBE_AFTER_DAMAGE = 4096  # sequence numbers probed one by one past a page the walk cannot read
MAX_ROWS = 1_000_000  # rows considered at most (their order keys are held in memory: a few ints each)
MAX_META_DEPTH = 32  # as ingest.max_meta_depth's default, when the caller passes no limit
MAX_REQUEST_ID_CHARS = 200

# (seq, state, taken_seq, pos): what the order needs, read and type-checked for every row first
_ORDER_COLUMNS = ("seq, CASE WHEN typeof(state) = 'text' THEN substr(state, 1, 16) END, "
                  "CASE WHEN typeof(taken_seq) = 'integer' THEN taken_seq END, "
                  "CASE WHEN typeof(pos) = 'integer' THEN pos END")
_KEYS = f"SELECT {_ORDER_COLUMNS} FROM clips WHERE seq > ? ORDER BY seq LIMIT 1"
_TYPES = ("SELECT typeof(state), typeof(request_id), typeof(format), typeof(sample_rate), typeof(channels), "
          "typeof(meta), typeof(payload), length(payload), length(meta), length(request_id), length(format) "
          "FROM clips WHERE seq = ?")
_VALUES = "SELECT request_id, format, sample_rate, channels, meta FROM clips WHERE seq = ?"
_PAYLOAD = "SELECT payload FROM clips WHERE seq = ?"
# A streamed clip (clip_open .. clip_close) holds no payload in its row: its audio is its stored parts, in order.
_STREAM_ID = "SELECT CASE WHEN typeof(segment_id) = 'text' AND length(segment_id) <= 200 THEN segment_id END " \
             "FROM clips WHERE seq = ?"
_PART_KEYS = ("SELECT seq, typeof(data), length(data) FROM stream_parts WHERE segment_id = ? AND typeof(seq) = "
              "'integer' ORDER BY seq LIMIT ?")
_PART = "SELECT data FROM stream_parts WHERE segment_id = ? AND seq = ?"
MAX_PARTS = 1_000_000

# Validates one clip's payload as an enqueue would; returns its decoded duration (raises Rejection if refused).
Validate = Callable[[bytes, "str | None", "int | None", "int | None"], float]


@dataclass
class SalvageReport:
    """What a salvage did: new segment ids, rows skipped (seq and why), clips already salvaged, unreadable rows."""

    added: list[str] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    duplicates: int = 0
    unreadable: int = 0

    @property
    def lost(self) -> int:
        return self.unreadable + len(self.skipped)


def source_uri(path: str | Path) -> str:
    """The read-only, immutable SQLite URI of a file, escaped by pathlib (no `#`/`%`/`?` read as URI syntax)."""
    return Path(path).resolve().as_uri() + "?mode=ro&immutable=1"


def spool_validator(spool: Spool, max_clip_seconds: float = float("inf"), min_clip_seconds: float = 0.0) -> Validate:
    """Decode as the daemon's enqueue does (broadcast rate and channels of the spool, the clip limits)."""

    def validate(payload: bytes, fmt: str | None, rate: int | None, channels: int | None) -> float:
        clip = decode_audio(payload, format=fmt, sample_rate=rate, channels=channels, rate=spool.audio_rate,
                            out_channels=spool.audio_channels, max_seconds=max_clip_seconds,
                            min_seconds=min_clip_seconds)
        return clip.duration_s

    return validate


def salvage(corrupt_file: str | Path, spool: Spool, validate: Validate | None = None, *,
            max_meta_depth: int = MAX_META_DEPTH, log: Callable[[str], None] | None = None) -> SalvageReport:
    """Queue every clip of `corrupt_file` that passes an enqueue's checks into `spool` (see the module docstring)."""
    check = validate or spool_validator(spool)
    report = SalvageReport()
    with _open_source(Path(corrupt_file)) as src:
        keys = _walk(src, report)
        # on-air clips by take order, then pending ones by position: a pending clip keeps the taken_seq of an
        # earlier take (cut by play_now and requeued, or recovered at a restart), which must not order it
        keys.sort(key=lambda k: (k[1] != "playing", k[2] if k[1] == "playing" and isinstance(k[2], int) else 0,
                                 k[3] if isinstance(k[3], int) else 0, k[0]))
        for seq, *_ in keys:
            try:
                sid, duplicate = _salvage_row(src, seq, spool, check, max_meta_depth)
            except Rejection as e:
                report.skipped.append((seq, f"{e.code}: {e.reason}"[:300]))
            except (sqlite3.DatabaseError, ValueError, TypeError, OverflowError) as e:
                report.skipped.append((seq, f"unreadable: {type(e).__name__}: {e}"[:300]))
            else:
                if duplicate:
                    report.duplicates += 1
                else:
                    report.added.append(sid)
            if log is not None and report.skipped and report.skipped[-1][0] == seq:
                log(f"row {seq} skipped: {report.skipped[-1][1]}")
    return report


@contextmanager
def _open_source(path: Path) -> Iterator[sqlite3.Connection]:
    """The file read-only: immutable when it has no write-ahead log; with one, a read-only open of a private link (or
    copy) of the file and its -wal, so the commits only the WAL holds are read (an immutable open ignores the WAL)."""
    tmp, db = _open_with_wal(path)
    try:
        if db is None:
            db = sqlite3.connect(source_uri(path), uri=True)
        yield db
    finally:
        if db is not None:
            db.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _open_with_wal(path: Path) -> tuple[str | None, sqlite3.Connection | None]:
    """(the private folder, the connection) reading `path` with its -wal; (None, None) without a WAL to read."""
    wal = Path(str(path) + "-wal")
    if not (wal.is_file() and wal.stat().st_size > 0):
        return None, None
    for parent in (path.resolve().parent, None):  # beside it (links: no copy), else the system's temp folder
        try:
            tmp = tempfile.mkdtemp(prefix=".salvage-", dir=parent)
        except OSError:
            continue
        try:
            copy = Path(tmp) / "source.sqlite3"
            for src_file, dst in ((path, copy), (wal, Path(str(copy) + "-wal"))):
                try:
                    os.link(src_file, dst)
                except OSError:
                    shutil.copyfile(src_file, dst)
            db = sqlite3.connect(copy.as_uri() + "?mode=ro", uri=True)
        except (OSError, sqlite3.Error):
            shutil.rmtree(tmp, ignore_errors=True)
            continue
        try:
            db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError:  # a WAL SQLite cannot use: the file is read alone, as without one
            db.close()
            shutil.rmtree(tmp, ignore_errors=True)
            return None, None
        return tmp, db
    return None, None


def _walk(src: sqlite3.Connection, report: SalvageReport) -> list[tuple[Any, ...]]:
    """(seq, state, taken_seq, pos) of every row the b-tree still leads to, in seq order."""
    out: list[tuple[Any, ...]] = []
    last = 0
    while len(out) < MAX_ROWS:
        try:
            row = src.execute(_KEYS, (last,)).fetchone()
        except sqlite3.DatabaseError:
            row = _probe(src, last, report)
        if row is None:
            break
        out.append(row)
        last = row[0]
    return out


def _probe(src: sqlite3.Connection, last: int, report: SalvageReport) -> tuple[Any, ...] | None:
    """Past a page the walk cannot read: the next readable row among the next PROBE_AFTER_DAMAGE seq numbers."""
    for seq in range(last + 1, last + 1 + PROBE_AFTER_DAMAGE):
        try:
            row = src.execute(f"SELECT {_ORDER_COLUMNS} FROM clips WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.DatabaseError:
            report.unreadable += 1
            continue
        if row is not None:
            return row
    return None


def _salvage_row(src: sqlite3.Connection, seq: int, spool: Spool, check: Validate,
                 max_meta_depth: int) -> tuple[str, bool]:
    types = src.execute(_TYPES, (seq,)).fetchone()
    if types is None:
        raise Rejection("bad_request", "the row vanished")
    (t_state, t_rid, t_fmt, t_rate, t_ch, t_meta, t_payload, n_payload, n_meta, n_rid, n_fmt) = types
    if t_payload != "blob":
        raise Rejection("bad_request", f"payload is {t_payload}, not a blob: not read")
    cap = spool.limits.max_spool_bytes
    parts: list[tuple[int, int]] | None = None
    if n_payload == 0:  # a streamed clip: its acknowledged parts are its payload
        parts = _stream_parts(src, seq, cap)
        n_payload = sum(n for _, n in parts)
    if not isinstance(n_payload, int) or n_payload <= 0 or n_payload > cap:
        raise Rejection("oversize", f"payload of {n_payload} bytes (queue.max_spool_bytes {cap}): not read")
    for name, t, allowed in (("state", t_state, {"text"}), ("request_id", t_rid, {"text", "null"}),
                             ("format", t_fmt, {"text", "null"}), ("sample_rate", t_rate, {"integer", "null"}),
                             ("channels", t_ch, {"integer", "null"}), ("meta", t_meta, {"text", "null"})):
        if t not in allowed:
            raise Rejection("bad_request", f"{name} is {t}")
    if (n_meta or 0) > MAX_HEADER_BYTES or (n_rid or 0) > MAX_REQUEST_ID_CHARS or (n_fmt or 0) > 32:
        raise Rejection("oversize", "meta, request id or format longer than a request could carry")
    rid, fmt, rate, channels, meta_text = src.execute(_VALUES, (seq,)).fetchone()
    meta = json.loads(meta_text) if meta_text else {}
    if not isinstance(meta, dict):
        raise Rejection("bad_request", f"meta is a JSON {type(meta).__name__}, not an object")
    if json_depth(meta) > max_meta_depth:
        raise Rejection("meta_too_deep", f"meta nested deeper than {max_meta_depth}")
    if parts is None:
        (payload,) = src.execute(_PAYLOAD, (seq,)).fetchone()
        payload = bytes(payload)
    else:
        (sid,) = src.execute(_STREAM_ID, (seq,)).fetchone()
        payload = b"".join(bytes(src.execute(_PART, (sid, n)).fetchone()[0]) for n, _ in parts)
    duration_s = check(payload, fmt, rate, channels)  # decode, duration and clip limits, as an enqueue
    if rid is None:  # idempotent: this clip salvaged again is a duplicate of the first; two clips of the same content
        # (a jingle pushed twice without an id) are two acknowledged clips: the row's own segment id tells them apart
        (row_sid,) = src.execute(_STREAM_ID, (seq,)).fetchone()
        digest = hashlib.sha256()
        for part in (payload, json.dumps(meta, sort_keys=True).encode(), str((fmt, rate, channels)).encode(),
                     (row_sid if row_sid is not None else f"seq {seq}").encode()):
            digest.update(hashlib.sha256(part).digest())
        rid = f"salvage:{digest.hexdigest()[:40]}"
    res = spool.add_ex(payload, meta, "enqueue", rid, duration_s, format=fmt, sample_rate=rate, channels=channels)
    return res.entry.segment_id, res.duplicate


def _stream_parts(src: sqlite3.Connection, seq: int, cap: int) -> list[tuple[int, int]]:
    """(part seq, bytes) of the streamed clip in row `seq`: its parts 0, 1, 2, ... as long as they follow each other
    (the audio must be whole and in order), each a BLOB, together within `cap`; none for a clip that is no stream
    (or a file from before streamed clips: no stream_parts table)."""
    row = src.execute(_STREAM_ID, (seq,)).fetchone()
    if row is None or row[0] is None:
        return []
    try:
        keys = src.execute(_PART_KEYS, (row[0], MAX_PARTS)).fetchall()
    except sqlite3.OperationalError:  # no stream_parts table
        return []
    out: list[tuple[int, int]] = []
    total = 0
    for n, t, size in keys:
        if n != len(out) or t != "blob" or not isinstance(size, int):
            break
        total += size
        if total > cap:
            raise Rejection("oversize", f"streamed clip's parts over {cap} bytes (queue.max_spool_bytes): not read")
        out.append((n, size))
    return out
