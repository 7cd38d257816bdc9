"""The durable queue: exact ordering of enqueue/insert/play_now/clear/cancel, limits, de-duplication, crash recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from flashtalk_live.queue.spool import Spool, SpoolError, SpoolLimits, SpoolLocked

from support.audiogen import encode


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def add(s: Spool, name: str, mode: str = "enqueue", dur: float = 1.0, **kw):
    return s.add(name.encode(), {"name": name}, mode, duration_s=dur, **kw)


def names(s: Spool) -> list[str]:
    return [e.meta["name"] for e in s.pending()]


def test_enqueue_appends_and_positions(spool):
    acks = [add(spool, n) for n in "abc"]
    assert [a.position for a in acks] == [0, 1, 2]
    assert names(spool) == ["a", "b", "c"]
    assert [e.position for e in spool.pending()] == [0, 1, 2]
    assert not spool.interrupt_pending()


def test_insert_goes_after_playing_and_earlier_inserts(spool):
    for n in "abc":
        add(spool, n)
    assert spool.take_next().meta["name"] == "a"  # a is playing
    i1 = add(spool, "i1", "insert")
    i2 = add(spool, "i2", "insert")
    assert (i1.position, i2.position) == (0, 1)
    assert names(spool) == ["i1", "i2", "b", "c"]
    assert not spool.interrupt_pending()  # insert never cuts the playing clip
    assert spool.take_next().meta["name"] == "i1"  # i1 started: a later insert goes after i2 only
    add(spool, "i3", "insert")
    assert names(spool) == ["i2", "i3", "b", "c"]
    assert spool.take_next().meta["name"] == "i2"
    assert spool.take_next().meta["name"] == "i3"
    add(spool, "i4", "insert")  # no insert waiting: plays next
    assert names(spool) == ["i4", "b", "c"]


def test_play_now_goes_to_head_and_flags_interrupt(spool):
    for n in "ab":
        add(spool, n)
    a = spool.take_next()
    add(spool, "i1", "insert")
    p1 = add(spool, "p1", "play_now")
    assert p1.position == 0 and names(spool) == ["p1", "i1", "b"]
    assert spool.interrupt_pending()
    p2 = add(spool, "p2", "play_now")  # the newest play_now wins the head
    assert p2.position == 0 and names(spool) == ["p2", "p1", "i1", "b"]
    assert spool.peek().interrupt and spool.peek().meta["name"] == "p2"
    add(spool, "i2", "insert")  # inserts queue behind play_now clips and earlier inserts
    assert names(spool) == ["p2", "p1", "i1", "i2", "b"]
    # the timeline cuts a at a chunk boundary and starts the head
    assert spool.mark_interrupted(a.segment_id)
    assert spool.take_next().meta["name"] == "p2"
    assert not spool.interrupt_pending()  # the cut asked for has happened; p1 just plays next
    assert spool.peek().meta["name"] == "p1" and not spool.peek().interrupt
    assert names(spool) == ["p1", "i1", "i2", "b"]


def test_clear_drops_pending_only(spool):
    for n in "abc":
        add(spool, n)
    a = spool.take_next()
    ids = [e.segment_id for e in spool.pending()]
    assert spool.clear() == ids
    assert spool.pending() == []
    assert [e.segment_id for e in spool.playing()] == [a.segment_id]
    assert spool.stats()["clips"] == 1
    assert spool.clear() == []


def test_cancel_pending_and_playing(spool):
    a, b, c = (add(spool, n) for n in "abc")
    assert spool.cancel(b.segment_id) == "pending"
    assert names(spool) == ["a", "c"] and [e.position for e in spool.pending()] == [0, 1]
    assert spool.cancel(b.segment_id) is None
    assert spool.cancel("nope") is None
    playing = spool.take_next()
    assert spool.cancel(playing.segment_id) == "playing"  # flagged, cut at the next chunk boundary
    assert spool.interrupt_pending() and spool.is_cancel_requested(playing.segment_id)
    assert spool.mark_interrupted(playing.segment_id)
    assert not spool.interrupt_pending()
    assert names(spool) == ["c"]


def test_move_before_after_and_to_an_index(spool):
    a, b, c, d = (add(spool, n) for n in "abcd")
    assert spool.move(d.segment_id, before=b.segment_id) == (3, 1)
    assert names(spool) == ["a", "d", "b", "c"]
    assert spool.move(a.segment_id, after=c.segment_id) == (0, 3)
    assert names(spool) == ["d", "b", "c", "a"]
    assert spool.move(c.segment_id, to=0) == (2, 0)
    assert names(spool) == ["c", "d", "b", "a"]
    assert spool.move(c.segment_id, to=99) == (0, 3)  # past the end: last
    assert names(spool) == ["d", "b", "a", "c"]
    assert spool.move(b.segment_id, to=1) == (1, 1)  # where it is already: nothing changes
    assert [e.position for e in spool.pending()] == [0, 1, 2, 3]
    assert spool.peek().meta["name"] == "d" and spool.get(c.segment_id).position == 3
    with pytest.raises(ValueError):
        spool.move(a.segment_id, before=b.segment_id, to=1)


def test_move_refuses_unknown_and_not_pending_clips_and_changes_nothing(spool):
    a, b, c = (add(spool, n) for n in "abc")
    playing = spool.take_next()
    assert playing.segment_id == a.segment_id
    cases = [({"segment_id": "nope", "to": 0}, "not_found", "segment_id"),
             ({"segment_id": b.segment_id, "before": "nope"}, "not_found", "before"),
             ({"segment_id": a.segment_id, "to": 1}, "not_pending", "segment_id"),
             ({"segment_id": c.segment_id, "after": a.segment_id}, "not_pending", "after"),
             ({"segment_id": b.segment_id, "before": b.segment_id}, "bad_request", "before")]
    for kw, code, field in cases:
        with pytest.raises(SpoolError) as e:
            spool.move(kw.pop("segment_id"), **kw)
        assert (e.value.code, e.value.field) == (code, field)
    assert names(spool) == ["b", "c"] and [p.segment_id for p in spool.playing()] == [a.segment_id]


def test_move_renumbers_when_the_gap_is_used_up_and_survives_reopen(tmp_path):
    s = Spool(tmp_path / "spool")
    clips = [add(s, n) for n in "abcd"]
    # c to between a and b, again and again: each halves the gap until the queue must be spread out
    for i in range(30):
        mover = clips[2 + i % 2]
        s.move(mover.segment_id, after=clips[0].segment_id)
    assert names(s) == ["a", "d", "c", "b"]
    s.close()
    with Spool(tmp_path / "spool") as s2:
        assert names(s2) == ["a", "d", "c", "b"]
        assert [e.position for e in s2.pending()] == [0, 1, 2, 3]


def test_moved_clips_and_later_inserts(spool):
    for n in "ab":
        add(spool, n)
    spool.take_next()  # a on air
    p = add(spool, "p", "play_now")
    add(spool, "c")
    assert spool.interrupt_pending()
    spool.move(p.segment_id, to=2)  # the operator takes the play_now back: its cut is withdrawn
    assert names(spool) == ["b", "c", "p"] and not spool.interrupt_pending()
    c = spool.pending()[1]
    spool.move(c.segment_id, to=0)  # to the head: it counts as an insert, so a later insert goes after it
    add(spool, "i", "insert")
    assert names(spool) == ["c", "i", "b", "p"]


def test_finished_clips_are_deleted_and_bytes_freed(tmp_path):
    s = Spool(tmp_path / "sp")
    big = os.urandom(4 * 1024 * 1024)
    entries = [s.add(big, {}, "enqueue", duration_s=1.0) for _ in range(5)]
    full = s.stats()["spool_bytes"]
    for _ in entries:
        e = s.take_next()
        s.mark_finished(e.segment_id)
    st = s.stats()
    assert st["clips"] == 0 and st["payload_bytes"] == 0
    s._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after = s.stats()["spool_bytes"]
    print(f"spool bytes with 20 MiB queued: {full}, after finishing all: {after}")
    assert after < 8 * 1024 * 1024
    s.close()


def test_limits(tmp_path):
    s = Spool(tmp_path / "sp", SpoolLimits(max_clips=3, max_queued_seconds=10.0, max_spool_bytes=1000))
    add(s, "a", dur=4)
    add(s, "b", dur=4)
    with pytest.raises(SpoolError) as ei:
        add(s, "c", dur=4)
    assert ei.value.code == "queue_full" and "10" in ei.value.reason
    add(s, "c", dur=1)
    with pytest.raises(SpoolError) as ei:
        add(s, "d", dur=0.1)
    assert ei.value.code == "queue_full" and "clips" in ei.value.reason
    s.clear()
    with pytest.raises(SpoolError) as ei:
        s.add(b"x" * 1001, {}, "enqueue", duration_s=1)
    assert ei.value.code == "oversize"
    s.add(b"x" * 600, {}, "enqueue", duration_s=1)
    with pytest.raises(SpoolError) as ei:
        s.add(b"x" * 600, {}, "enqueue", duration_s=1)
    assert ei.value.code == "queue_full" and "bytes" in ei.value.reason
    assert s.stats()["clips"] == 1  # rejections changed nothing
    s.close()


def test_request_id_dedup_even_after_finish(spool):
    a = add(spool, "a", request_id="r1")
    again = spool.add_ex(b"other", {}, "enqueue", "r1", 5.0)
    assert again.duplicate and again.ack["segment_id"] == a.segment_id and again.ack["position"] == 0
    assert len(spool.pending()) == 1
    spool.mark_finished(spool.take_next().segment_id)
    assert spool.add_ex(b"a", {}, "enqueue", "r1", 1.0).duplicate  # never plays twice
    assert spool.pending() == []
    assert spool.lookup_request("r1")["segment_id"] == a.segment_id


def test_recover_on_reopen(tmp_path):
    s = Spool(tmp_path / "sp")
    for n in "abcd":
        add(s, n)
    done = s.take_next()
    s.mark_finished(done.segment_id)
    playing = s.take_next()  # b was on air
    add(s, "i", "insert")
    s.close()
    s2 = Spool(tmp_path / "sp")
    assert s2.recovered == [playing.segment_id]
    assert names(s2) == ["b", "i", "c", "d"]
    assert s2.pending()[0].replays == 1
    add(s2, "j", "insert")  # the recovered clip counts as current: inserts go after it and after i
    assert names(s2) == ["b", "i", "j", "c", "d"]
    s2.close()


def test_a_playing_clip_cancelled_before_its_cut_aired_is_dropped_on_recovery_not_replayed(tmp_path):
    s = Spool(tmp_path / "sp")
    for n in "abc":
        add(s, n)
    a, b = s.take_next(), s.take_next()  # a on air, b rendered ahead
    assert s.cancel(a.segment_id) == "playing"
    s.close()  # the process dies before the cut airs
    s2 = Spool(tmp_path / "sp")
    assert s2.recovered == [b.segment_id]
    assert names(s2) == ["b", "c"] and s2.get(a.segment_id) is None
    assert s2.stats()["clips"] == 2
    s2.close()


def test_single_owner(tmp_path):
    s = Spool(tmp_path / "sp")
    with pytest.raises(SpoolLocked):
        Spool(tmp_path / "sp")
    s.close()
    Spool(tmp_path / "sp").close()


def test_load_audio_reproducible(tmp_path):
    s = Spool(tmp_path / "sp", audio_rate=48000, audio_channels=2)
    data = encode("mp3", 0.5)
    e = s.add(data, {}, "enqueue", duration_s=0.5, format="mp3")
    a1, a2 = s.load_audio(e), s.load_audio(e.segment_id)
    assert a1.broadcast.shape == (24000, 2) and np.array_equal(a1.broadcast, a2.broadcast)
    s.close()


def test_threads(tmp_path):
    s = Spool(tmp_path / "sp")
    errors = []

    def producer(k):
        try:
            for i in range(25):
                s.add(f"{k}-{i}".encode(), {"k": k, "i": i}, "enqueue", duration_s=0.1)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    taken = []

    def consumer():
        for _ in range(200):
            e = s.take_next()
            if e:
                taken.append(e.meta)
                s.mark_finished(e.segment_id)

    ts = [threading.Thread(target=producer, args=(k,)) for k in range(3)] + [threading.Thread(target=consumer)]
    [t.start() for t in ts]
    [t.join(60) for t in ts]
    rest = [e.meta for e in s.pending()]
    got = taken + rest
    assert not errors and len(got) == 75
    for k in range(3):  # every producer's clips stay in its own order
        assert [m["i"] for m in got if m["k"] == k] == list(range(25))
    s.close()


CHILD = textwrap.dedent("""
    import json, sys, time
    from flashtalk_live.queue.spool import Spool
    s = Spool(sys.argv[1])
    out = {}
    for n in ["done", "x", "y", "z"]:
        out[n] = s.add(n.encode(), {"name": n}, "enqueue", duration_s=1.0).segment_id
    e = s.take_next(); s.mark_finished(e.segment_id)   # 'done' finished before the crash
    e = s.take_next()                                  # 'x' is on air when we die
    print(json.dumps(out), flush=True)                 # the acks are out
    time.sleep(60)
""")


@pytest.mark.timeout(60)
def test_sigkill_after_acks_loses_nothing(tmp_path):
    path = tmp_path / "sp"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        ids = json.loads(p.stdout.readline())
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    assert p.returncode == -signal.SIGKILL
    s = Spool(path)  # the lock died with the process
    assert s.recovered == [ids["x"]]
    assert [e.segment_id for e in s.pending()] == [ids["x"], ids["y"], ids["z"]]  # in order, none twice
    assert s.get(ids["done"]) is None  # a finished clip never comes back
    # a second crash while x replays brings it back once more, still once in the queue
    s.take_next()
    s.close()
    s = Spool(path)
    assert [e.meta["name"] for e in s.pending()] == ["x", "y", "z"] and s.pending()[0].replays == 2
    s.close()


def test_untake_requeue_and_unrequeue_for_re_plans(tmp_path):
    """A re-plan gives taken clips back at the head in their order; a clip cut by play_now is requeued right after
    the waiting play_now clips; neither is deleted by an 'interrupted' settling, and both survive a crash."""
    s = Spool(tmp_path / "spool")
    for n in "xab":
        add(s, n)
    x, a = s.take_next(), s.take_next()  # x on air, a rendered ahead
    assert s.untake(a.segment_id) and names(s) == ["a", "b"]
    add(s, "i", "insert")
    assert names(s) == ["i", "a", "b"]  # a counts as pending: the insert goes before the enqueued clip
    add(s, "p", "play_now")
    assert s.interrupt_pending()
    assert s.requeue(x.segment_id) and names(s) == ["p", "x", "i", "a", "b"]
    assert not s.mark_interrupted(x.segment_id) and s.get(x.segment_id).state == "pending"
    assert s.unrequeue(x.segment_id) and s.get(x.segment_id).state == "playing"
    assert s.requeue(x.segment_id)
    p = s.take_next()
    assert p.meta["name"] == "p" and not s.interrupt_pending()
    assert s.untake(p.segment_id) and s.interrupt_pending()  # given back: its cut is asked for again
    s.take_next()
    s.close()
    s = Spool(tmp_path / "spool")  # reopened as after a crash (recovery runs on open): p was playing, x requeued
    assert s.recovered == [p.segment_id] and names(s) == ["p", "x", "i", "a", "b"]
    s.close()


def test_a_view_never_shows_a_clip_both_playing_and_pending(spool):
    """status reads playing and pending as one view: a clip the timeline takes meanwhile is in one list or the
    other, never both (separate reads showed the clip replaying after a restart twice, under load)."""
    for i in range(150):
        spool.add(b"x" * 8, duration_s=1.0, request_id=f"r{i}")
    both: list[str] = []
    done = threading.Event()

    def take_all() -> None:
        while spool.take_next() is not None:
            pass
        done.set()

    t = threading.Thread(target=take_all)
    t.start()
    while not done.is_set():
        playing, pending = spool.view(limit=200)
        both += sorted({e.segment_id for e in playing} & {e.segment_id for e in pending})
    t.join()
    assert both == []


def test_a_resend_whose_id_left_the_request_memory_while_its_clip_is_still_queued_is_a_duplicate(tmp_path, monkeypatch):
    """Ids are remembered for the last REQUEST_MEMORY accepted clips; a clip can wait longer than that (inserts ahead
    of it, a deep queue). A resend of its id then hit the clips table's UNIQUE request_id: an IntegrityError, answered
    `internal`, for a client doing what the protocol asks. It is the same clip: a duplicate with its ack."""
    import flashtalk_live.queue.spool as spool_mod

    monkeypatch.setattr(spool_mod, "REQUEST_MEMORY", 2)
    with Spool(tmp_path / "sp") as s:
        a = add(s, "a", request_id="r1")
        for i in range(3):
            add(s, f"i{i}", "insert", request_id=f"x{i}")  # later clips, aired before it
        again = s.add_ex(b"a", {"name": "a"}, "enqueue", "r1", 1.0)
        assert again.duplicate and again.ack["segment_id"] == a.segment_id
        assert names(s) == ["i0", "i1", "i2", "a"]
        for _ in range(3):  # the inserts air; ids of finished clips are forgotten past the memory as before
            s.mark_finished(s.take_next().segment_id)
        add(s, "b", request_id="x3")
        assert s.lookup_request("x0") is None and s.lookup_request("r1") is not None
