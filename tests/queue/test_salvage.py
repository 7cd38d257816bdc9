"""`spool salvage` cannot be turned against the box (issue 24, item 5): one crafted file for each fault the issue
found, and every good row of it is saved."""

from __future__ import annotations

import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashtalk_live.queue.salvage import salvage, source_uri, spool_validator
from flashtalk_live.queue.spool import DB_NAME, Spool

from support.audio import wav_bytes
from support.paths import child_env

GOOD = ["g0", "g1", "g2"]


def crafted(tmp_path: Path, folder: str = "old") -> Path:
    """A spool file holding three good clips (real audio), to be damaged by each test."""
    d = tmp_path / folder
    with Spool(d) as s:
        for i, name in enumerate(GOOD):
            s.add(wav_bytes(0.2, 300.0 + 100 * i), {"name": name}, "enqueue", duration_s=0.2, format="wav")
    return d / DB_NAME


def bad_row(path: Path, seq: int | None = None, **columns) -> None:
    """One more row: a copy of the first with `columns` replaced (SQL expressions), at `seq` when given."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA ignore_check_constraints = ON")  # a crafted file holds whatever its maker wrote
    cols = ["segment_id", "request_id", "mode", "state", "pos", "duration_s", "format", "sample_rate", "channels",
            "meta", "payload_bytes", "payload", "created"]
    exprs = [columns.get(c, c) for c in cols]
    exprs[0] = columns.get("segment_id", "'bad' || hex(randomblob(4))")
    db.execute(f"INSERT INTO clips({'seq, ' if seq is not None else ''}{', '.join(cols)}) "
               f"SELECT {f'{seq}, ' if seq is not None else ''}{', '.join(exprs)} FROM clips ORDER BY seq LIMIT 1")
    db.commit()
    db.close()


def names(s: Spool) -> list[str]:
    return [e.meta.get("name") for e in s.pending()]


@pytest.mark.timeout(60)
def test_a_row_at_seq_2_to_the_62_is_walked_to_not_counted_to(tmp_path):
    src = crafted(tmp_path)
    bad_row(src, seq=1 << 62, meta="'{\"name\": \"far\"}'")
    t = time.perf_counter()
    with Spool(tmp_path / "new") as s:
        report = salvage(src, s)
        assert sorted(names(s)) == sorted(GOOD + ["far"])  # a valid clip at a far seq is a good row too (its pos: g0's)
    assert time.perf_counter() - t < 30 and report.lost == 0


@pytest.mark.timeout(60)
def test_a_payload_that_is_an_integer_is_never_read(tmp_path):
    src = crafted(tmp_path)
    for _ in range(4):
        bad_row(src, payload="300000000")
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with Spool(tmp_path / "new") as s:
        report = salvage(src, s)
        assert names(s) == GOOD
    grew_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak0) / 1024
    print(f"peak RSS grew {grew_mb:.1f} MB")
    assert grew_mb < 100 and len(report.skipped) == 4
    assert all("integer, not a blob" in why for _, why in report.skipped)


@pytest.mark.timeout(60)
def test_malformed_rows_are_skipped_and_reported_not_the_end_of_the_run(tmp_path):
    src = crafted(tmp_path)
    bad_row(src, meta="'{not json'")
    bad_row(src, state="x'00ff'")
    bad_row(src, meta="'[1, 2]'")
    bad_row(src, payload="x'00010203'", format="'wav'")  # a blob, but no audio
    bad_row(src, sample_rate="'fast'")
    deep = "'" + '{"k":' * 40 + "1" + "}" * 40 + "'"
    bad_row(src, meta=deep)
    with Spool(tmp_path / "new") as s:
        report = salvage(src, s)
        assert names(s) == GOOD
    reasons = [why for _, why in report.skipped]
    assert len(reasons) == 6, reasons
    assert any("meta_too_deep" in r for r in reasons) and any("undecodable_audio" in r for r in reasons)


@pytest.mark.timeout(60)
def test_each_clip_is_checked_as_an_enqueue_would_be(tmp_path):
    """A 3 s clip labelled 1.0 s, past a 2 s max_clip_seconds: its decoded duration decides, and it is refused."""
    src = crafted(tmp_path)
    db = sqlite3.connect(src)
    long = wav_bytes(3.0, 800.0)
    db.execute("UPDATE clips SET payload = ?, payload_bytes = ?, duration_s = 1.0, meta = '{\"name\": \"long\"}' "
               "WHERE seq = (SELECT MAX(seq) FROM clips)", (long, len(long)))
    db.commit()
    db.close()
    with Spool(tmp_path / "new") as s:
        report = salvage(src, s, spool_validator(s, max_clip_seconds=2.0))
        assert names(s) == GOOD[:2]
        assert [e.duration_s for e in s.pending()] == pytest.approx([0.2, 0.2], abs=0.01)
    assert len(report.skipped) == 1 and "too_long" in report.skipped[0][1]


@pytest.mark.timeout(60)
def test_a_path_with_hash_and_percent_opens_that_file_and_no_other(tmp_path):
    src = crafted(tmp_path, "spool#x%41y?z")
    (tmp_path / "spool").mkdir()  # where a URI read by string would have stopped at '#'
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert "%23" in source_uri(src) and "%25" in source_uri(src) and "%3F" in source_uri(src)
    with Spool(tmp_path / "new") as s:
        salvage(src, s)
        assert names(s) == GOOD
    after = sorted(str(p) for p in tmp_path.rglob("*") if "new" not in p.relative_to(tmp_path).parts[0])
    assert after == [p for p in before if "new" not in Path(p).relative_to(tmp_path).parts[0]]  # no stray file


@pytest.mark.timeout(60)
def test_salvaging_twice_queues_each_clip_once(tmp_path):
    src = crafted(tmp_path)
    with Spool(tmp_path / "new") as s:
        first = salvage(src, s)
        second = salvage(src, s)
        assert names(s) == GOOD
    assert len(first.added) == 3 and second.added == [] and second.duplicates == 3


@pytest.mark.timeout(120)
def test_the_cli_reports_what_it_refused(tmp_path):
    src = crafted(tmp_path)
    bad_row(src, payload="300000000")
    state = tmp_path / "state"
    r = subprocess.run([sys.executable, "-m", "flashtalk_live", "spool", "salvage", str(src), "--state-dir",
                        str(state)], capture_output=True, text=True, timeout=60,
                       env=child_env())
    assert r.returncode == 0, r.stderr
    assert "salvaged 3 clip(s)" in r.stdout and "1 row(s) refused" in r.stdout
    assert "not a blob" in r.stderr


@pytest.mark.timeout(60)
def test_a_streamed_clips_acknowledged_parts_are_salvaged(tmp_path):
    """A streamed clip keeps its audio in stream_parts (its clips row holds no payload): a spool moved aside with one
    in it (closed, or still open) must give back every acknowledged part, not skip the clip as a 0-byte payload."""
    import numpy as np

    d = tmp_path / "old"
    pcm = lambda level, n: np.full((n, 2), level * 512, "<i2").tobytes()  # noqa: E731
    with Spool(d) as s:
        for name, close in (("closed", True), ("open", False)):
            sid = s.open_stream({"name": name}, "enqueue", None, format="pcm_s16le", sample_rate=48000, channels=2,
                                declared_s=None).entry.segment_id
            for i in range(3):
                s.append_stream(sid, i, pcm(i + 1, 4800), 0.1)
            if close:
                s.end_stream(sid, "closed")
    with Spool(tmp_path / "new") as s:
        report = salvage(d / DB_NAME, s)
        assert report.lost == 0, report.skipped
        assert sorted(names(s)) == ["closed", "open"]
        for e in s.pending():
            assert s.payload(e.segment_id) == b"".join(pcm(i + 1, 4800) for i in range(3))
            assert abs(e.duration_s - 0.3) < 1e-6


@pytest.mark.timeout(60)
def test_clips_committed_only_to_the_wal_are_salvaged(tmp_path):
    """A spool moved aside after a crash keeps its last commits in its -wal (quarantine moves it along): salvage must
    read them. An `immutable` open ignores the WAL, so every clip not yet checkpointed was lost."""
    import shutil

    d = tmp_path / "live"
    s = Spool(d)
    for i, name in enumerate(GOOD):
        s.add(wav_bytes(0.2, 300.0 + 100 * i), {"name": name}, "enqueue", duration_s=0.2, format="wav")
    wal = Path(str(d / DB_NAME) + "-wal")
    assert wal.exists() and wal.stat().st_size > 0  # the commits are in the WAL, not checkpointed yet
    aside = tmp_path / "aside"
    aside.mkdir()
    src = aside / (DB_NAME + ".corrupt-20260101T000000Z")
    shutil.copyfile(d / DB_NAME, src)  # the files as a SIGKILL left them (what quarantine moves aside)
    shutil.copyfile(wal, str(src) + "-wal")
    s.close()
    before = sorted(str(p) for p in aside.rglob("*"))
    with Spool(tmp_path / "new") as s:
        report = salvage(src, s)
        assert names(s) == GOOD, report
    assert report.lost == 0
    assert sorted(str(p) for p in aside.rglob("*")) == before  # nothing left beside the file


@pytest.mark.timeout(60)
def test_a_pending_clip_once_taken_keeps_its_place(tmp_path):
    """Order: on-air clips by take order, then pending clips by position. A pending clip that was taken once (cut by
    play_now and requeued, or recovered at a restart) keeps its taken_seq: it must still be ordered by position."""
    d = tmp_path / "old"
    with Spool(d) as s:
        for i, name in enumerate(GOOD):
            s.add(wav_bytes(0.2, 300.0 + 100 * i), {"name": name}, "enqueue", duration_s=0.2, format="wav")
        s.take_next()  # g0 on air when the box went down
    with Spool(d) as s:  # the restart recovers g0 (pending again, at the head)
        assert names(s) == GOOD
    with Spool(tmp_path / "new") as s:
        report = salvage(d / DB_NAME, s)
        assert report.lost == 0
        assert names(s) == GOOD


@pytest.mark.timeout(60)
def test_two_identical_clips_without_a_request_id_are_both_salvaged(tmp_path):
    """The same jingle pushed twice (no id): two acknowledged clips, both must come back (and only once each when
    salvaged twice)."""
    d = tmp_path / "old"
    jingle = wav_bytes(0.2, 440.0)
    with Spool(d) as s:
        for _ in range(2):
            s.add(jingle, {"name": "jingle"}, "enqueue", duration_s=0.2, format="wav")
    with Spool(tmp_path / "new") as s:
        first = salvage(d / DB_NAME, s)
        second = salvage(d / DB_NAME, s)
        assert names(s) == ["jingle", "jingle"], (first, second)
    assert len(first.added) == 2 and second.added == [] and second.duplicates == 2
