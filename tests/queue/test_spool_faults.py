"""The spool under the box's faults: unreadable files, a full file system, a deep queue, salvage."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from flashtalk_live.queue.salvage import salvage
from flashtalk_live.queue.spool import DB_NAME, RESERVE_NAME, Spool, SpoolDiskFull

from support.audio import wav_bytes
from support.box_faults import fill, garbage, truncate, zero_header, zero_length


def add(s: Spool, name: str, mode: str = "enqueue", dur: float = 1.0, size: int = 16):
    return s.add(name.encode().ljust(size, b"."), {"name": name}, mode, duration_s=dur)


def add_wav(s: Spool, name: str, seconds: float = 0.2, freq: float = 440.0):
    """A clip whose payload is real audio: salvage decodes every clip as an enqueue would."""
    return s.add(wav_bytes(seconds, freq), {"name": name}, "enqueue", duration_s=seconds, format="wav")


def names(s: Spool) -> list[str]:
    return [e.meta["name"] for e in s.pending()]


def _filled_spool(path: Path, n: int = 5) -> None:
    with Spool(path) as s:
        for i in range(n):
            add(s, f"c{i}", size=2000)
        s.take_next()


@pytest.mark.parametrize("damage", [truncate, garbage, zero_header])
def test_unreadable_spool_is_moved_aside_and_a_fresh_one_opens(tmp_path, damage):
    d = tmp_path / "spool"
    _filled_spool(d)
    for extra in ("-wal", "-shm"):
        Path(str(d / DB_NAME) + extra).unlink(missing_ok=True)
    damage(d / DB_NAME)
    before = (d / DB_NAME).read_bytes()
    with Spool(d) as s:
        assert s.quarantined is not None
        aside, why = s.quarantined
        assert aside.parent == d and aside.name.startswith(DB_NAME + ".corrupt-")
        assert aside.read_bytes() == before  # kept, never deleted or rewritten
        assert why
        assert s.pending() == [] and s.stats()["clips"] == 0
        add(s, "fresh")
        assert names(s) == ["fresh"]


def testzero_length_spool_is_an_empty_queue_not_a_fault(tmp_path):
    d = tmp_path / "spool"
    _filled_spool(d)
    for extra in ("-wal", "-shm"):
        Path(str(d / DB_NAME) + extra).unlink(missing_ok=True)
    zero_length(d / DB_NAME)
    with Spool(d) as s:
        assert s.quarantined is None
        add(s, "a")
        assert names(s) == ["a"]


def test_salvage_recovers_the_readable_clips_in_play_order(tmp_path):
    d = tmp_path / "old"
    with Spool(d) as s:
        for i in range(6):
            add_wav(s, f"c{i}", freq=300.0 + 50 * i)
        s.take_next()  # c0 on air when the file broke
        s.close()
    dst = tmp_path / "new"
    with Spool(dst) as s:
        report = salvage(d / DB_NAME, s)
        assert report.lost == 0
        assert names(s) == ["c0", "c1", "c2", "c3", "c4", "c5"]
        assert len(report.added) == 6
        assert s.payload(report.added[2]) == wav_bytes(0.2, 400.0)


def test_salvage_skips_what_it_cannot_read(tmp_path):
    d = tmp_path / "old"
    with Spool(d) as s:
        for i in range(40):
            add_wav(s, f"c{i}", seconds=0.15, freq=200.0 + 10 * i)
    f = d / DB_NAME
    data = bytearray(f.read_bytes())
    page = 4096
    # wipe a few pages in the middle: 8, so a table leaf is among them whatever the schema's size (a leaf every
    # 5 pages here; only wiped overflow pages would read back as garbage, not as an error)
    for p in range(len(data) // page // 2, len(data) // page // 2 + 8):
        data[p * page:(p + 1) * page] = os.urandom(page)
    f.write_bytes(bytes(data))
    dst = tmp_path / "new"
    with Spool(dst) as s:
        added = salvage(f, s).added
        got = names(s)
    assert 0 < len(added) < 40 and len(got) == len(added)
    assert got == sorted(got, key=lambda n: int(n[1:]))  # what survived keeps its order


def test_deep_queue_keeps_order_positions_and_totals(tmp_path):
    with Spool(tmp_path / "spool", None) as s:
        for i in range(300):
            add(s, f"e{i}", dur=0.5)
        # 40 inserts into the same gap force the gap to run out and the queue to be spread out again
        for i in range(40):
            add(s, f"i{i}", "insert")
        p = add(s, "now", "play_now")
        assert p.position == 0
        want = ["now"] + [f"i{i}" for i in range(40)] + [f"e{i}" for i in range(300)]
        assert names(s) == want
        assert [e.position for e in s.pending()] == list(range(len(want)))
        got = s.get(s.pending()[100].segment_id)
        assert got is not None and got.position == 100
        # cancel in the middle, take the head, clear: totals follow without a scan
        mid = s.pending()[150]
        assert s.cancel(mid.segment_id) == "pending"
        taken = s.take_next()
        assert taken is not None and taken.meta["name"] == "now"
        st = s.stats()
        assert (st["pending"], st["playing"], st["clips"]) == (len(want) - 2, 1, len(want) - 1)
        assert st["queued_seconds"] == pytest.approx(1.0 + 40 * 1.0 + 300 * 0.5 - mid.duration_s)
        ack = s.add_ex(b"x" * 16, {"name": "tail"}, "enqueue", None, 2.0).ack
        assert ack["position"] == len(want) - 2
        assert ack["queued_ahead_s"] == pytest.approx(st["queued_seconds"] - 1.0)  # the playing clip is not ahead
        cleared = s.clear()
        assert len(cleared) == len(want) - 1 and s.stats()["pending"] == 0 and s.stats()["clips"] == 1
    with Spool(tmp_path / "spool") as s:  # totals are rebuilt from the file on open; the playing clip recovered
        assert s.stats()["pending"] == 1 and names(s) == ["now"]


def test_old_dense_positions_still_order_inserts(tmp_path):
    """A spool written before positions had gaps (0, 1, 2, ...) takes inserts between neighbours."""
    d = tmp_path / "spool"
    with Spool(d) as s:
        for n in ("p", "a", "b"):
            add(s, n, "insert" if n == "p" else "enqueue")
    db = sqlite3.connect(d / DB_NAME)
    rows = db.execute("SELECT segment_id FROM clips ORDER BY pos").fetchall()
    db.executemany("UPDATE clips SET pos=? WHERE segment_id=?", [(i, r[0]) for i, r in enumerate(rows)])
    db.commit()
    db.close()
    with Spool(d) as s:
        add(s, "i", "insert")
        assert names(s) == ["p", "i", "a", "b"]


@pytest.fixture
def small_fs(tmp_path, tmpfs):
    """A 4 MiB tmpfs: a real ENOSPC from the kernel, not a simulated one."""
    return tmpfs(tmp_path / "fs", "4m")


def test_full_disk_refuses_new_clips_but_acknowledged_ones_still_move(small_fs):
    d = small_fs / "spool"
    with Spool(d, reserve_bytes=1 << 20) as s:
        assert (d / RESERVE_NAME).exists()
        for i in range(3):
            add(s, f"c{i}", size=20_000)
        ballast = fill(small_fs)
        with pytest.raises(SpoolDiskFull) as e:
            for i in range(50):  # the WAL may still take a page or two before the disk says no
                add(s, f"x{i}", size=100_000)
        assert e.value.code == "disk_full" and "bytes free" in e.value.reason
        # the clips already acknowledged go on air and finish: the reserve pays for it
        first = s.take_next()
        assert first is not None and first.meta["name"] == "c0"
        assert s.mark_finished(first.segment_id)
        assert s.take_next().meta["name"] == "c1"
        # space comes back: the reserve is remade and enqueues work again
        ballast.unlink()
        assert s.ensure_reserve() and not s.reserve_released
        add(s, "after")
        assert names(s)[-1] == "after"


def test_spool_opens_on_a_full_disk(small_fs):
    d = small_fs / "spool"
    with Spool(d, reserve_bytes=1 << 20) as s:
        add(s, "kept", size=10_000)
        s.take_next()  # on air when the box went down
    fill(small_fs)
    with Spool(d, reserve_bytes=1 << 20) as s:  # no free byte: the open must not need one
        assert names(s) == ["kept"] or [e.meta["name"] for e in s.playing()] == ["kept"]
        with pytest.raises(SpoolDiskFull):
            for i in range(20):
                add(s, f"x{i}", size=100_000)


def test_salvage_cli_requeues_into_the_configured_state_dir(tmp_path):
    old = tmp_path / "old"
    with Spool(old) as s:
        for i in range(3):
            add_wav(s, f"c{i}", freq=500.0 + i)
    state = tmp_path / "state"
    r = subprocess.run([sys.executable, "-m", "flashtalk_live", "spool", "salvage", str(old / DB_NAME),
                        "--state-dir", str(state)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "salvaged 3 clip(s)" in r.stdout
    with Spool(state / "spool") as s:
        assert names(s) == ["c0", "c1", "c2"]
    # the daemon holds the spool: salvage says to stop it instead of writing beside it
    with Spool(state / "spool"):
        r = subprocess.run([sys.executable, "-m", "flashtalk_live", "spool", "salvage", str(old / DB_NAME),
                            "--state-dir", str(state)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 3 and "stop the daemon first" in r.stderr


def test_a_reserve_that_could_not_be_made_at_open_is_made_once_there_is_room(tmp_path, monkeypatch):
    """A daemon started on a full disk has no reserve file. The housekeeping remakes the reserve only while
    `reserve_released` says it is missing (daemon.py `_housekeeping`): it must say so, or the reserve never comes back
    and the next full disk stops acknowledged clips from moving."""
    import errno

    real = os.posix_fallocate

    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    d = tmp_path / "spool"
    monkeypatch.setattr(os, "posix_fallocate", no_room)
    with Spool(d, reserve_bytes=1 << 20) as s:
        assert not (d / RESERVE_NAME).exists()
        assert s.reserve_released and s.stats()["reserve_released"]  # not in place
        monkeypatch.setattr(os, "posix_fallocate", real)  # room again
        if s.reserve_released:  # what the housekeeping does once the watermark says disk_ok
            s.ensure_reserve()
        assert (d / RESERVE_NAME).stat().st_size == 1 << 20 and not s.reserve_released


def test_no_reserve_configured_is_not_a_released_reserve(tmp_path):
    with Spool(tmp_path / "spool", reserve_bytes=0) as s:
        assert s.ensure_reserve() and not s.reserve_released


def test_a_clip_left_playing_by_a_recovery_the_full_disk_refused_airs_first_once_there_is_room(tmp_path, monkeypatch):
    """On a disk so full that recovery cannot be written at open, the clip that was on air stays 'playing'. Once the
    disk has room, it must replay before the clips queued after it, in this life (not after some later restart)."""
    d = tmp_path / "spool"
    with Spool(d) as s:
        for n in ("a", "b", "c"):
            add(s, n)
        s.take_next()  # a on air when the box went down

    def disk_full(self):
        raise SpoolDiskFull(d, sqlite3.OperationalError("database or disk is full"))

    with monkeypatch.context() as m:
        m.setattr(Spool, "recover", disk_full)
        s = Spool(d)
    try:
        assert s.recovered == []
        first = s.take_next()  # the disk has room again
        assert first is not None and first.meta["name"] == "a"
        assert [e.meta["name"] for e in s.playing()] == ["a"] and names(s) == ["b", "c"]
        assert s.get(first.segment_id).replays == 1
    finally:
        s.close()


def test_a_spool_another_connection_holds_locked_is_not_moved_aside(tmp_path, monkeypatch):
    """`database is locked` (another SQLite connection holds the file: an operator's sqlite3 shell) says nothing about
    the file being unreadable. Opening used to take it for damage: the healthy spool was moved aside and a fresh, empty
    one opened, every acknowledged clip off the air until a manual salvage. The open must fail instead, file in place."""
    d = tmp_path / "spool"
    with Spool(d) as s:
        add(s, "kept")
    other = sqlite3.connect(str(d / DB_NAME), isolation_level=None)
    other.execute("PRAGMA locking_mode=EXCLUSIVE")
    other.execute("BEGIN EXCLUSIVE")
    other.execute("SELECT COUNT(*) FROM clips").fetchone()
    real = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: real(*a, **{**k, "timeout": 0.1}))  # not 30 s of waiting
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        Spool(d)
    assert not list(d.glob(DB_NAME + ".corrupt-*"))
    other.close()
    monkeypatch.undo()
    with Spool(d) as s:  # the holder let go: the same queue
        assert s.quarantined is None and names(s) == ["kept"]
