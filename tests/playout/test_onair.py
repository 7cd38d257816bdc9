"""On-air bookkeeping (playout/onair.py) with a real spool, timeline and event bus: marks become events, a finished
clip leaves the spool before its `finished` is published, a spool that cannot write keeps the clip for a retry, and
the plan is published once per clip until it moves."""

from __future__ import annotations

import sqlite3

import numpy as np

from flashtalk_live.events import EventBus
from flashtalk_live.playout.pacing import Lookahead
from flashtalk_live.queue.spool import Spool
from flashtalk_live.settings import Settings
from flashtalk_live.playout.admission import Admission
from flashtalk_live.chunks import Mark
from flashtalk_live.playout.onair import OnAir
from flashtalk_live.playout.replan import Replanner
from flashtalk_live.playout.timeline import Timeline

FPS = 25


def _add(spool: Spool, seconds: float) -> str:
    pcm = np.zeros((int(seconds * 48000), 2), "<i2").tobytes()
    return spool.add(pcm, duration_s=seconds, format="pcm_s16le", sample_rate=48000, channels=2).segment_id


def _room(tmp_path):
    st = Settings(state_dir="/nonexistent-state")
    spool = Spool(tmp_path / "spool")
    admission = Admission.from_settings(st.renderer, st.video, lambda: 0.0)
    tl = Timeline(st.video, st.encoder, spool, None, admission=admission, replannable=True)
    rp = Replanner(tl, Lookahead(8), poll_s=0.001)
    events = EventBus()
    seen: list[dict] = []
    events.subscribe(seen.append)
    onair = OnAir(events, spool, tl, rp, admission, fps=FPS, air_frame=lambda: None, media_time_s=lambda: 0.0)
    return spool, onair, seen


def test_renderer_changed_comes_with_the_first_frame_of_the_other_renderer_on_air(tmp_path):
    spool, onair, seen = _room(tmp_path)
    onair.reason_of = {"still": "failed", "flashtalk": "ready"}.get
    for f, renderer in enumerate(["still", "still", None, "flashtalk", "flashtalk", None, "still", "flashtalk"]):
        onair.aired([], None, f, renderer)  # None: an underrun's repeated frame
    changes = [(e["frame"], e["previous"], e["renderer"], e["reason"]) for e in seen if e["type"] == "renderer_changed"]
    assert changes == [(3, "still", "flashtalk", "ready"), (6, "flashtalk", "still", "failed"),
                       (7, "still", "flashtalk", "ready")]
    assert onair.renderer == "flashtalk"
    spool.close()


def test_marks_become_events_and_a_finished_clip_is_gone_from_the_spool_before_its_event(tmp_path):
    spool, onair, seen = _room(tmp_path)
    sid = _add(spool, 1.0)
    assert spool.take_next().segment_id == sid
    in_spool_at_finished = []
    onair.events.subscribe(lambda e: in_spool_at_finished.append(spool.get(sid)) if e["type"] == "finished" else None)

    onair.aired([], None, 0)
    onair.aired([], None, 1)  # idle once per stretch
    onair.aired([Mark(2, "started", sid)], sid, 2)
    assert onair.segment == sid
    onair.aired([], sid, 3)
    onair.aired([Mark(4, "finished", sid)], None, 4)
    assert [(e["type"], e.get("frame")) for e in seen] == [("idle", 0), ("started", 2), ("finished", 4), ("idle", 4)]
    assert seen[2]["media_time_s"] == 0.16 and seen[2]["source"] == "queue"
    assert onair.segment is None and in_spool_at_finished == [None]
    assert onair.storage_status() == {"spool_write_errors": 0, "unsettled_clips": 0}


def test_a_clip_cut_by_play_now_stays_in_the_spool(tmp_path):
    spool, onair, seen = _room(tmp_path)
    sid = _add(spool, 1.0)
    spool.take_next()
    spool.requeue(sid)
    onair.aired([Mark(0, "interrupted", sid, requeued=True)], None, 0)
    assert seen[0]["type"] == "interrupted" and seen[0]["requeued"] is True
    assert spool.get(sid) is not None


def test_a_spool_that_cannot_write_keeps_the_clip_playing_until_a_retry_commits(tmp_path):
    spool, onair, seen = _room(tmp_path)
    sid = _add(spool, 1.0)
    spool.take_next()
    # The fault: another writer holds the database's write lock; the spool gives up after 50 ms instead of 30 s.
    blocker = sqlite3.connect(str(spool.db_path), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    spool._db.execute("PRAGMA busy_timeout=50")
    onair.aired([Mark(0, "finished", sid)], None, 0)
    assert [e["type"] for e in seen] == ["finished", "idle"]  # the air goes on
    assert onair.storage_status() == {"spool_write_errors": 1, "unsettled_clips": 1}
    assert spool.get(sid).state == "playing"  # a crash now replays it: never lost
    onair.settle()
    assert onair.storage_status() == {"spool_write_errors": 2, "unsettled_clips": 1}
    blocker.execute("ROLLBACK")
    onair.settle()
    assert onair.storage_status() == {"spool_write_errors": 2, "unsettled_clips": 0}
    assert spool.get(sid) is None
    blocker.close()
    spool.close()


def test_the_plan_is_scheduled_once_and_forgotten_when_the_clip_starts(tmp_path):
    spool, onair, seen = _room(tmp_path)
    a, b = _add(spool, 2.0), _add(spool, 3.0)
    row = onair.plan_of(b)
    assert row["segment_id"] == b and row["state"] == "pending"
    assert [(e["type"], e["segment_id"]) for e in seen] == [("scheduled", a), ("scheduled", b)]
    onair.publish_plan()
    assert len(seen) == 2  # nothing moved
    clips, media = onair.planned()
    assert [c["segment_id"] for c in clips] == [a, b] and media == 0.0
    onair.events.publish("started", segment_id=a)
    onair.publish_plan()
    assert [(e["type"], e["segment_id"]) for e in seen[3:]] == [("scheduled", a)]  # its plan is announced afresh
