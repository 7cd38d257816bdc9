"""Issue 2 through a real daemon process: every format over ipc and tcp, replies, events in order, crash safety."""

from __future__ import annotations

import time

import pytest
import zmq

from flashtalk_live.client import Rejected

from support.audiogen import FORMATS, encode, pcm_s16le
from support.daemon_harness import wait_for
from support.paths import child_env


@pytest.mark.timeout(120)
def test_every_format_over_ipc_and_tcp_with_events_in_order(daemon_factory):
    d = daemon_factory().start()
    ev = d.events()
    with d.client() as ipc, d.client(tcp=True) as tcp:
        ev.sync(ipc)
        pushed = []
        for i, name in enumerate(FORMATS):
            c = ipc if i % 2 == 0 else tcp
            reply = c.enqueue(encode(name, seconds=0.3, freq=300 + 100 * i), format=FORMATS[name][5])
            assert reply["ok"] and reply["segment_id"] and abs(reply["duration_s"] - 0.3) < 0.12, (name, reply)
            pushed.append(reply["segment_id"])
        reply = tcp.enqueue(pcm_s16le(0.3, rate=24000, channels=2), format="pcm_s16le", sample_rate=24000, channels=2)
        assert reply["ok"], reply
        pushed.append(reply["segment_id"])
        assert ipc.ping()["ok"] and tcp.ping()["ok"]
        st = tcp.status()
        assert st["ok"] and st["state"] in ("starting", "on_air") and "queue" in st and "outputs" in st

        seen: list[dict] = []
        wait_for(ev, lambda e: e["type"] == "finished" and e.get("segment_id") == pushed[-1], 60, seen)
    accepted = [e["segment_id"] for e in seen if e["type"] == "accepted"]
    started = [e["segment_id"] for e in seen if e["type"] == "started" and e.get("source") == "queue"]
    finished = [e["segment_id"] for e in seen if e["type"] == "finished" and e.get("source") == "queue"]
    assert accepted == pushed
    assert started == pushed and finished == pushed
    # each clip: started before finished, and the next starts no earlier than the previous finished
    frames = {(e["type"], e.get("segment_id")): e["frame"] for e in seen if e["type"] in ("started", "finished")}
    for a, b in zip(pushed, pushed[1:]):
        assert frames[("started", a)] < frames[("finished", a)] <= frames[("started", b)]
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(seqs)
    assert d.stop() == 0


@pytest.mark.timeout(120)
def test_bad_requests_are_rejected_and_the_daemon_keeps_serving(daemon_factory):
    d = daemon_factory().start()
    with d.client() as c:
        for payload, code in [
            (b"\x00garbage" * 10, "undecodable_audio"),
            (b"", "missing_audio"),
        ]:
            with pytest.raises(Rejected) as e:
                c.call("enqueue", payload if payload else None)
            assert e.value.code == code, (payload[:10], e.value.code)
        with pytest.raises(Rejected) as e:
            c.call("no_such_command")
        assert e.value.code == "unknown_command"
        with pytest.raises(Rejected) as e:
            c.cancel("does-not-exist")
        assert e.value.code == "not_found"
    # raw frames: not JSON, wrong version
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(d.ipc)
    for frames, code in [([b"{not json"], "bad_json"), ([b'{"v": 99, "cmd": "ping"}'], "unsupported_version")]:
        s.send_multipart(frames)
        assert s.poll(5000), "no reply"
        import json

        reply = json.loads(s.recv_multipart()[-1])
        assert reply["ok"] is False and reply["code"] == code, reply
    s.close(0)
    with d.client() as c:
        assert c.ping()["ok"]
        assert c.status()["queue"]["clips"] == 0
    assert d.stop() == 0


@pytest.mark.timeout(150)
def test_sigkill_recovers_acknowledged_clips_in_order_and_never_replays_finished(daemon_factory):
    d = daemon_factory()
    d.start()
    ev = d.events()
    with d.client() as c:
        ev.sync(c)
        done = c.enqueue(encode("wav_s16", seconds=0.3, freq=500))["segment_id"]
        wait_for(ev, lambda e: e["type"] == "finished" and e.get("segment_id") == done, 30)
        queued = [c.enqueue(encode("flac", seconds=2.0, freq=600 + 100 * i))["segment_id"] for i in range(3)]
    d.kill()  # SIGKILL right after the three acks: the first is on air or about to be

    d.start()
    with d.client() as c:
        st = c.status()
    order = [e["segment_id"] for e in st["playing"]] + [e["segment_id"] for e in st["pending"]]
    assert order == queued, (order, queued)
    assert done not in order

    ev = d.events()
    seen: list[dict] = []
    wait_for(ev, lambda e: e["type"] == "finished" and e.get("segment_id") == queued[-1], 60, seen)
    finished = [e["segment_id"] for e in seen if e["type"] == "finished" and e.get("source") == "queue"]
    # the first clip may have finished before this subscription was live; what we saw is in order, once each
    assert finished == queued[len(queued) - len(finished):]
    assert len(finished) >= 2
    with d.client() as c:
        st = c.status()
    assert st["queue"]["clips"] == 0 and not st["playing"]
    assert d.stop() == 0

    d.start()  # a third life: nothing comes back
    with d.client() as c:
        st = c.status()
    assert st["queue"]["clips"] == 0 and not st["playing"] and not st["pending"]
    assert d.stop() == 0


@pytest.mark.timeout(180)
def test_push_wait_ends_when_the_daemon_stops_and_the_sockets_go(daemon_factory, tmp_path):
    """`push --wait` of a long clip, then SIGTERM: the CLI says so and exits 6; the clean stop removes the sockets.
    The CLI finds the daemon from the same config file, run from another directory."""
    import subprocess
    import sys

    d = daemon_factory().start()
    clip = tmp_path / "long.wav"
    clip.write_bytes(encode("wav_s16", seconds=60.0))
    env = child_env()  # this checkout's package, from another working directory
    cli = subprocess.Popen([sys.executable, "-m", "flashtalk_live", "push", "--wait", "-c", str(d.config), str(clip)],
                           cwd=str(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ev = d.events()
    with d.client() as c:
        ev.sync(c)
        wait_for(ev, lambda e: e["type"] == "started" and e.get("source") == "queue", 60)
    assert d.stop() == 0
    out, err = cli.communicate(timeout=60)
    assert cli.returncode == 6, err
    assert "went away" in err and "long.wav" in err and '"segment_id"' in out
    assert not list(d.state_dir.glob("*.sock"))
