"""Issue 12 end to end: the real daemon on a real full file system (a small tmpfs) stays on air and recovers."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest

from flashtalk_live.client import ClientError, Rejected

from support.audiogen import encode
from support.box_faults import fill, garbage, idle_connections, scrape, truncate, zero_header, zero_length
from support.daemon_harness import DaemonProcess, wait_for
from support.rtmp_harness import max_gap, read_media
from support.waiting import until


@pytest.fixture
def small_fs(tmp_path, tmpfs):
    """The state directory itself is a 24 MiB tmpfs (its config and log stay outside, as under systemd)."""
    return tmpfs(tmp_path / "state", "24m")


STORAGE = ["storage.min_free_bytes=4194304", "storage.min_free_percent=0", "storage.spool_reserve_bytes=2097152",
           "storage.check_interval_s=0.2"]


@pytest.mark.rtmp
@pytest.mark.timeout(240)
def test_full_disk_keeps_the_room_on_air_and_recovers(small_fs, nginx_rtmp):
    srv = nginx_rtmp()
    d = DaemonProcess(small_fs, [{"name": "live", "url": srv.url("room")},
                                           {"name": "rec", "url": "{state_dir}/rec/live-{n}.flv"}], STORAGE).start()
    ev = d.events()
    seen: list[dict] = []
    with d.client() as c:
        ev.sync(c)
        ids = [c.enqueue(encode("wav_s16", seconds=1.5, freq=440.0 + 220 * i))["segment_id"] for i in range(3)]
        time.sleep(1.0)
        # under the watermark: degraded, new clips refused, the recording finalised and paused
        low = fill(small_fs, "low", leave=2 << 20)
        st = until(lambda: (s := c.status())["storage"]["degraded"] and s)
        assert st["state"] == "on_air"
        with pytest.raises(Rejected) as e:
            c.enqueue(encode("wav_s16", seconds=0.5))
        assert e.value.code == "disk_full" and "bytes" in e.value.reason
        until(lambda: [o for o in c.status()["outputs"] if o["name"] == "rec" and o["paused"]])
        assert (small_fs / "rec" / "live-0.flv").stat().st_size > 0
        # then not one byte left: the spool's reserve still carries the acknowledged clips through
        full = fill(small_fs)
        # every clip acknowledged before the disk filled still airs and finishes
        for sid in ids:
            wait_for(ev, lambda x, sid=sid: x["type"] == "finished" and x.get("segment_id") == sid, 60, seen)
        until(lambda: c.status()["queue"]["clips"] == 0)
        assert any(x["type"] == "disk_low" for x in seen)
        assert c.status()["state"] == "on_air"
        # space returns: the daemon leaves the degraded state by itself and takes clips again
        full.unlink()
        low.unlink()
        until(lambda: not c.status()["storage"]["degraded"])
        sid = c.enqueue(encode("wav_s16", seconds=1.0, freq=1500.0))["segment_id"]
        wait_for(ev, lambda x: x["type"] == "finished" and x.get("segment_id") == sid, 60, seen)
        assert any(x["type"] == "disk_ok" for x in seen)
    assert d.stop() == 0
    info = read_media(srv.recordings("room")[0])
    assert max_gap(info.video_pts) <= 0.041  # no gap on air through the whole episode
    recs = list((small_fs / "rec").glob("*.flv"))
    assert len(recs) >= 2 and all(p.stat().st_size > 0 for p in recs)  # paused, resumed, no 0-byte file

    # a restart on the full disk goes on air, degraded
    fill(small_fs)
    d2 = DaemonProcess(small_fs, [{"name": "live", "url": srv.url("room2")}], STORAGE).start()
    with d2.client() as c:
        st = until(lambda: (s := c.status())["state"] == "on_air" and s)
        assert st["storage"]["degraded"]
    assert d2.stop() == 0


@pytest.mark.rtmp
@pytest.mark.timeout(240)
def test_descriptor_flood_leaves_control_outputs_and_recordings_working(tmp_path, nginx_rtmp):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:  # this test process holds 2,200 sockets itself
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    srv = nginx_rtmp()
    d = DaemonProcess(tmp_path / "state", [{"name": "live", "url": srv.url("room")},
                                            {"name": "rec", "url": "{state_dir}/rec/live-{n}.flv",
                                             "segment_seconds": 2.0}],
                      ["output_policy.backoff_max_s=1.0", "ingest.handshake_timeout_s=2.0"], nofile=1024).start()
    socks: list = []
    try:
        with d.client(timeout_s=10.0) as c:
            st = until(lambda: (s := c.status())["state"] == "on_air" and
                       any(o["name"] == "live" and o["state"] == "up" for o in s["outputs"]) and s)
            metrics_port = st["metrics_port"]
            socks += idle_connections(d.tcp_port, 1100)
            socks += idle_connections(d.tcp_events, 1100)
            socks += idle_connections(metrics_port, 1100)
            time.sleep(1.0)
            # the operator's ipc socket still answers
            until(lambda: _ping(d), 30)
            assert d.proc.poll() is None
            # an RTMP endpoint that goes away comes back while the flood is held
            before = next(o for o in c.status()["outputs"] if o["name"] == "live")["reconnects"]
            srv.kill()
            time.sleep(1.0)
            srv.restart()
            until(lambda: any(o["name"] == "live" and o["state"] == "up" and o["reconnects"] > before
                              for o in c.status()["outputs"]), 60)
            # the recording still cuts new segments (opens new files)
            segs = next(o for o in c.status()["outputs"] if o["name"] == "rec")["segments"]
            until(lambda: next(o for o in c.status()["outputs"] if o["name"] == "rec")["segments"] >= segs + 2, 30)
            # the metrics endpoint answers a real scrape again once the flood has been shed
            body = until(lambda: scrape(metrics_port), 30)
            assert "flashtalk_state" in body
    finally:
        for s in socks:
            s.close()
    assert d.proc.poll() is None, d.log_tail()
    rc = d.stop()
    assert rc == 0, d.log_tail()  # not -SIGABRT: libzmq never met EMFILE
    assert not any(x.get("event") == "broadcast_loop_crashed" for x in d.log_lines())


def _ping(d: DaemonProcess) -> bool:
    try:
        with d.client(timeout_s=3.0) as c:
            return bool(c.ping().get("ok"))
    except ClientError:
        return False


@pytest.mark.timeout(120)
def test_recordings_survive_a_crash_and_pause_leaves_finished_files(tmp_path):
    """SIGKILL mid-recording: the open .flv and fragmented .mp4 still play; a restart applies retention at once."""
    state = tmp_path / "state"
    outs = [{"name": "flv", "url": "{state_dir}/rec/a-{n}.flv"}, {"name": "mp4", "url": "{state_dir}/rec/b-{n}.mp4"}]
    d = DaemonProcess(state, outs).start()
    with d.client() as c:
        until(lambda: all(o["bytes"] > 200_000 for o in c.status()["outputs"]), 60)
    d.kill()
    for name in ("a-0.flv", "b-0.mp4"):
        info = read_media(state / "rec" / name)
        assert info.video_packets > 25 and info.keyframes and info.keyframes[0] == info.video_pts[0]
    # a 0-byte leftover (a crash right after an open) and a file past the age limit go at the next start
    (state / "rec" / "a-7.flv").touch()
    old = state / "rec" / "b-0.mp4"
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    d2 = DaemonProcess(state, outs, ["output_policy.recording_max_age_hours=1"]).start()
    with d2.client() as c:
        until(lambda: all(o["state"] == "up" for o in c.status()["outputs"]), 30)
    assert d2.stop() == 0
    assert not (state / "rec" / "a-7.flv").exists() and not old.exists()
    assert (state / "rec" / "a-0.flv").exists()
    assert all(p.stat().st_size > 0 for p in (state / "rec").iterdir())


def _spool_with_clips(state: Path) -> Path:
    from flashtalk_live.queue.spool import DB_NAME, Spool

    with Spool(state / "spool") as s:
        for i in range(5):
            s.add(bytes(2000), {"n": i}, "enqueue", duration_s=1.0)
    for extra in ("-wal", "-shm"):
        Path(str(state / "spool" / DB_NAME) + extra).unlink(missing_ok=True)
    return state / "spool" / DB_NAME


@pytest.mark.timeout(120)
@pytest.mark.parametrize("damage", [truncate, garbage, zero_header, zero_length])
def test_daemon_on_a_corrupt_spool_goes_on_air_and_names_both_files(tmp_path, damage):
    state = tmp_path / "state"
    db = _spool_with_clips(state)
    damage(db)
    before = db.read_bytes()
    t0 = time.monotonic()
    d = DaemonProcess(state, [{"name": "rec", "url": "{state_dir}/rec/a.flv"}]).start()
    try:
        with d.client() as c:
            st = until(lambda: (s := c.status())["state"] == "on_air" and s, 30)
            print(f"{damage.__name__}: on air {time.monotonic() - t0:.2f} s after the start")  # the 5 s
            aside = st["storage"]["spool_quarantined"]
            metrics = scrape(st["metrics_port"])
    finally:
        assert d.stop() == 0
    if damage is zero_length:  # an empty file is an empty queue, not a fault
        assert aside is None
        assert "flashtalk_spool_quarantined 0.0" in metrics
        return
    assert aside is not None and Path(aside).read_bytes() == before  # kept aside untouched
    assert "flashtalk_spool_quarantined 1.0" in metrics
    logged = [x for x in d.log_lines() if x.get("event") == "spool_quarantined"]
    assert logged and logged[0]["moved_to"] == aside and logged[0]["fresh"] == str(db)
    assert "spool salvage" in logged[0]["salvage"] and logged[0]["level"] == "error"
    ev = [x for x in d.log_lines() if x.get("event") == "event_spool_quarantined"]
    assert ev and ev[0]["moved_to"] == aside
