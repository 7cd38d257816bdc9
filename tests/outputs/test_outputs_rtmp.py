"""RTMP outputs against real nginx-rtmp servers on loopback, with real faults.

Each test streams a few seconds at real time through the real encoder and the OutputManager
(one child process per connection) and reads the servers' recordings back with PyAV.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from flashtalk_live.events import EventBus
from flashtalk_live.outputs.manager import OutputManager
from flashtalk_live.settings import OutputPolicy, OutputSettings

from support.outputs_driver import FPS, by_name, make_encoder, stream, wait_for
from support.rtmp_harness import max_gap, read_media

pytestmark = pytest.mark.rtmp

POLICY = OutputPolicy(backoff_initial_s=0.5, backoff_max_s=2.0, backoff_jitter=0.2, stall_timeout_s=3.0)


def _manager(policy: OutputPolicy = POLICY):
    """A fresh encoder and an output manager over it, with the events it publishes collected."""
    enc = make_encoder()
    bus = EventBus()
    events: list[dict] = []
    bus.subscribe(events.append)
    return enc, OutputManager.for_encoder(policy, bus, enc), events


def _wait_up(m: OutputManager, *names: str, timeout: float = 15.0) -> None:
    assert wait_for(lambda: all(by_name(m.status()).get(n, {}).get("state") == "up" for n in names), timeout), \
        m.status()


def _check_continuous(info, label: str) -> None:
    """One publish session: H.264 + AAC, starts on a keyframe, no gap > 200 ms, A/V ends aligned."""
    assert info.video_codec == "h264" and info.audio_codec == "aac", label
    assert info.sample_rate == 48000 and info.channels == 2, label
    assert info.video_pts and info.keyframes and info.keyframes[0] == info.video_pts[0], f"{label}: starts on a keyframe"
    assert info.video_dts == sorted(info.video_dts), f"{label}: video timestamps monotonic"
    assert info.audio_pts == sorted(info.audio_pts), f"{label}: audio timestamps monotonic"
    vgap, agap = max_gap(info.video_pts), max_gap(info.audio_pts)
    print(f"{label}: video {info.video_pts[0]:.3f}-{info.video_end:.3f} s ({info.video_packets} frames), "
          f"audio -{info.audio_end:.3f} s, max gap video {vgap * 1000:.0f} ms audio {agap * 1000:.0f} ms, "
          f"keyframes {[round(k, 2) for k in info.keyframes]}")
    assert vgap <= 0.2 and agap <= 0.2, label


@pytest.mark.timeout(90)
def test_one_output_to_nginx_reads_back_clean(nginx_rtmp) -> None:
    srv = nginx_rtmp()
    enc, m, events = _manager()
    m.add(OutputSettings(name="main", url=srv.url("main")))
    stat_seen = []
    res = stream(m, enc, 6.0, actions={3.0: lambda: stat_seen.append(srv.stat())})
    st = by_name(m.status())["main"]
    t = time.monotonic()
    m.close(5.0)
    print(f"send() worst {res.send_max_s * 1000:.2f} ms over {res.frames} frames; close {time.monotonic() - t:.2f} s; "
          f"status {st}")
    assert st["state"] == "up" and st["bitrate_bps"] > 0 and st["url"].endswith("/live/****")
    assert st["sent_packets"] + st["dropped_packets"] == res.packets  # every packet accounted for
    assert "<publishing/>" in stat_seen[0] and "<width>256</width>" in stat_seen[0]

    recs = srv.recordings("main")
    assert len(recs) == 1
    info = read_media(recs[0], decode=True)
    _check_continuous(info, "main")
    assert info.errors == []
    assert (info.width, info.height) == (256, 256) and round(info.fps) == FPS
    steps = {round(b - a, 2) for a, b in zip(info.keyframes[1:], info.keyframes[2:])}
    assert steps <= {2.0}, info.keyframes  # a keyframe every 2 s (the first one was requested on connect)
    assert info.video_packets + info.audio_packets == st["sent_packets"]  # nginx recorded all we sent
    assert abs(info.video_end - info.audio_end) < 0.05
    ups = [e for e in events if e["type"] == "endpoint_up"]
    assert ups and ups[0]["output"] == "main" and "****" in ups[0]["url"] and srv.url("main") not in str(events)


@pytest.mark.timeout(120)
def test_killed_server_comes_back_and_the_other_endpoint_never_notices(nginx_rtmp) -> None:
    a, b = nginx_rtmp(), nginx_rtmp()
    enc, m, events = _manager()
    m.add(OutputSettings(name="a", url=a.url("a")))
    m.add(OutputSettings(name="b", url=b.url("b")))
    marks: dict[str, float] = {}

    def kill_b() -> None:
        marks["kill"] = time.monotonic()
        marks["a_dropped_before"] = by_name(m.status())["a"]["dropped_packets"]
        b.kill()

    def restart_b() -> None:
        b.restart()
        marks["restart"] = time.monotonic()

    def watch_b_up() -> None:  # runs after restart: when did b come back?
        wait_for(lambda: by_name(m.status())["b"]["state"] == "up" and by_name(m.status())["b"]["reconnects"] > 0, 8)
        marks["b_up"] = time.monotonic()

    res = stream(m, enc, 11.0, actions={3.0: kill_b, 5.0: restart_b, 5.01: watch_b_up}, watch_status=True)
    st = by_name(m.status())
    m.close(5.0)
    print(f"send() worst {res.send_max_s * 1000:.2f} ms; status() worst {res.status_max_s * 1000:.2f} ms; "
          f"b back {marks.get('b_up', float('nan')) - marks['restart']:.2f} s after the restart; status {st['b']}")

    a_recs = a.recordings("a")
    assert len(a_recs) == 1
    a_info = read_media(a_recs[0])
    _check_continuous(a_info, "a (healthy)")
    assert st["a"]["reconnects"] == 0
    assert st["a"]["dropped_packets"] == marks["a_dropped_before"]  # nothing lost during b's outage
    assert a_info.video_packets + a_info.audio_packets == st["a"]["sent_packets"]

    b_recs = b.recordings("b")
    assert len(b_recs) == 2, b_recs  # one publish session before the kill, one after the restart
    first, second = read_media(b_recs[0]), read_media(b_recs[1])
    assert first.video_end < 3.5
    _check_continuous(second, "b (after restart)")
    assert second.video_pts[0] == 0.0 or second.video_pts[0] < 0.05  # rebased: a fresh origin per connection
    assert "b_up" in marks and st["b"]["state"] == "up" and st["b"]["reconnects"] >= 1
    assert st["b"]["dropped_packets"] > 0  # counted while down
    kinds = [(e["type"], e["output"]) for e in events]
    assert kinds.index(("endpoint_down", "b")) < len(kinds) - 1 - kinds[::-1].index(("endpoint_up", "b"))
    down = next(e for e in events if e["type"] == "endpoint_down" and e["output"] == "b")
    print(f"b went down with: {down['error']}")


@pytest.mark.timeout(120)
def test_mute_and_refused_endpoints_never_touch_the_healthy_one(nginx_rtmp, mute_server, refused_port) -> None:
    srv = nginx_rtmp()
    enc, m, events = _manager()
    m.add(OutputSettings(name="good", url=srv.url("good")))
    m.add(OutputSettings(name="mute", url=mute_server.url("x")))
    m.add(OutputSettings(name="refused", url=f"rtmp://127.0.0.1:{refused_port}/live/secretkey"))
    early: dict[str, int] = {}

    def snapshot() -> None:
        early["good_dropped"] = by_name(m.status())["good"]["dropped_packets"]

    def remove_mute() -> None:  # the case where FFmpeg's fifo muxer froze the whole process for seconds
        early["mute_pid"] = by_name(m.status())["mute"]["pid"]
        early["mute_status"] = by_name(m.status())["mute"]
        t = time.perf_counter()
        m.remove("mute")
        early["remove_s"] = time.perf_counter() - t

    res = stream(m, enc, 9.0, actions={2.0: snapshot, 7.0: remove_mute}, watch_status=True)
    st = by_name(m.status())
    st["mute"] = early["mute_status"]
    t = time.monotonic()
    m.close(3.0)
    close_s = time.monotonic() - t
    print(f"send() worst {res.send_max_s * 1000:.2f} ms (mean {sum(res.send_times) / len(res.send_times) * 1000:.3f} ms); "
          f"status() worst {res.status_max_s * 1000:.2f} ms; close {close_s:.2f} s")
    print(f"remove('mute') took {early['remove_s'] * 1000:.1f} ms")
    for n in ("mute", "refused"):
        print(n, st[n])
    if early["mute_pid"] is not None:
        with pytest.raises(ProcessLookupError):  # its child (stuck in the handshake) was SIGKILLed and reaped
            os.kill(early["mute_pid"], 0)
    assert "mute" not in m.names()

    recs = srv.recordings("good")
    assert len(recs) == 1
    info = read_media(recs[0], decode=True)
    _check_continuous(info, "good")
    assert info.errors == [] and info.video_packets + info.audio_packets == st["good"]["sent_packets"]
    assert st["good"]["state"] == "up" and st["good"]["reconnects"] == 0
    assert st["good"]["dropped_packets"] == early["good_dropped"]  # nothing lost once it was up

    assert st["mute"]["state"] != "up" and st["mute"]["reconnects"] >= 1
    assert "no connection within" in (st["mute"]["last_error"] or "")
    assert len(mute_server.conns) >= 2  # it really connected, and again after the deadline
    assert st["refused"]["state"] != "up" and st["refused"]["reconnects"] >= 2
    assert "refused" in (st["refused"]["last_error"] or "").lower()
    assert "secretkey" not in str(st) and "secretkey" not in str(events)
    assert {e["output"] for e in events if e["type"] == "endpoint_down"} >= {"mute", "refused"}


@pytest.mark.timeout(90)
def test_a_frozen_child_is_killed_by_the_stall_watchdog_and_replaced(nginx_rtmp) -> None:
    srv = nginx_rtmp()
    enc, m, _ = _manager(OutputPolicy(backoff_initial_s=0.3, backoff_max_s=1.0, stall_timeout_s=1.5))
    m.add(OutputSettings(name="s", url=srv.url("s")))
    frozen: dict[str, int] = {}

    def freeze_child() -> None:  # what a child stuck in a GIL-holding PyAV call looks like from outside
        frozen["pid"] = by_name(m.status())["s"]["pid"]
        os.kill(frozen["pid"], signal.SIGSTOP)

    res = stream(m, enc, 8.0, actions={2.0: freeze_child})
    st = by_name(m.status())["s"]
    m.close(5.0)
    print(f"send() worst {res.send_max_s * 1000:.2f} ms; {st}")
    assert st["pid"] != frozen["pid"] and st["state"] == "up" and st["reconnects"] >= 1
    assert "stalled" in st["previous_error"] and st["last_error"] is None  # up again: the stall is history
    with pytest.raises(ProcessLookupError):  # the frozen child was SIGKILLed and reaped
        os.kill(frozen["pid"], 0)
    recs = srv.recordings("s")
    assert len(recs) == 2
    _check_continuous(read_media(recs[1]), "s (replacement)")


@pytest.mark.timeout(90)
def test_outputs_are_added_and_removed_at_runtime(nginx_rtmp) -> None:
    srv = nginx_rtmp()
    enc, m, events = _manager()
    m.add(OutputSettings(name="first", url=srv.url("first")))
    pids: dict[str, int] = {}

    def add_second() -> None:
        m.add(OutputSettings(name="second", url=srv.url("second")))

    def remove_first() -> None:
        pids["first"] = by_name(m.status())["first"]["pid"]
        t = time.monotonic()
        m.remove("first")
        pids["remove_ms"] = int((time.monotonic() - t) * 1000)

    res = stream(m, enc, 9.0, actions={2.0: add_second, 6.0: remove_first})
    names = m.names()
    st = by_name(m.status())
    with pytest.raises(ValueError, match="no output named"):
        m.remove("nope")
    with pytest.raises(ValueError, match="already exists"):
        m.add(OutputSettings(name="second", url=srv.url("again")))
    m.close(5.0)
    print(f"send() worst {res.send_max_s * 1000:.2f} ms; remove() took {pids['remove_ms']} ms")
    assert names == ["second"] and st["second"]["state"] == "up"
    with pytest.raises(ProcessLookupError):
        os.kill(pids["first"], 0)
    first = read_media(srv.recordings("first")[0])
    second = read_media(srv.recordings("second")[0])
    _check_continuous(first, "first (removed at 6 s)")
    _check_continuous(second, "second (added at 2 s)")
    assert 5.0 < first.video_end < 7.0
    assert 5.0 < second.video_end < 8.0  # joined at ~2 s, on a requested keyframe, rebased to 0
    assert ("endpoint_down", "first") in [(e["type"], e["output"]) for e in events]


@pytest.mark.timeout(90)
def test_planned_reconnect_starts_a_fresh_connection_on_a_keyframe(nginx_rtmp) -> None:
    srv = nginx_rtmp()
    enc, m, _ = _manager(OutputPolicy(backoff_initial_s=0.3, stall_timeout_s=3.0,
                                      planned_reconnect_hours=3.0 / 3600))  # every 3 s of media
    m.add(OutputSettings(name="p", url=srv.url("p")))
    res = stream(m, enc, 10.0)
    st = by_name(m.status())["p"]
    m.close(5.0)
    print(f"send() worst {res.send_max_s * 1000:.2f} ms; {st}")
    recs = srv.recordings("p")
    assert st["planned_reconnects"] >= 2 and len(recs) >= 3
    for i, r in enumerate(recs):
        info = read_media(r)
        _check_continuous(info, f"p session {i}")
        assert info.video_pts[0] < 0.05  # each session starts at 0 on its own keyframe
        if i < len(recs) - 1:
            assert 2.9 <= info.video_end <= 3.3  # cut at the first keyframe at or after 3 s


@pytest.mark.timeout(60)
def test_upper_case_scheme_connects_and_stays_masked(nginx_rtmp) -> None:
    """`RTMP://` once passed validation and never connected: the output-kind registry normalises the scheme."""
    srv = nginx_rtmp()
    enc, m, events = _manager()
    m.add(OutputSettings(name="upper", url=srv.url("UPPERKEY").replace("rtmp://", "RTMP://")))
    stream(m, enc, 3.0)
    st = by_name(m.status())["upper"]
    m.close(5.0)
    assert st["state"] == "up" and st["url"] == f"rtmp://127.0.0.1:{srv.rtmp_port}/live/****", st
    assert "UPPERKEY" not in repr(events)
    assert len(srv.recordings("UPPERKEY")) == 1
