"""The daemon in-process with renderer test doubles: slow renderers underrun without drift, fast ones stay bounded,
a failing one falls back to the still renderer with no gap; metrics, runtime outputs, watchdog and SIGTERM-style stop."""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.request

import numpy as np
import pytest

from flashtalk_live.client import Client
from flashtalk_live.daemon import Daemon

from support.fakes import PaintRenderer
from support.rtmp_harness import max_gap, read_media
from support.settings import room_settings as settings
from support.waiting import until


def _received(sock: socket.socket, seconds: float) -> list[str]:
    """The sd_notify datagrams that arrive within `seconds` (the socket has a short timeout)."""
    got: list[str] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            got.append(sock.recv(1024).decode())
        except socket.timeout:
            pass
    return got


def run_for(d: Daemon, seconds: float, sample=None) -> list:
    d.start()
    samples = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        time.sleep(0.1)
        if sample:
            samples.append(sample(d))
    d.close()
    return samples


@pytest.mark.timeout(120)
def test_slow_renderer_underruns_without_stall_or_drift(tmp_path):
    # Idle rendered live, so this renderer cannot keep up; it loads once the still renderer's first frame is out, so
    # the still renderer's look-ahead (one chunk here) airs first, then the buffer runs dry within the 8 s.
    s = settings(tmp_path, "renderer.idle_reuse=false", "renderer.lookahead_chunks=1")
    budget = s.video.chunk_frames / s.video.fps
    slow = PaintRenderer(128, 128, delay_s=1.5 * budget, name="slow")
    d = Daemon(s, renderer_factory=lambda _s: slow)
    t0 = time.monotonic()
    run_for(d, 8.0)
    wall = time.monotonic() - t0
    st = d.playout.pacer.stats()
    enc = d.encoder.stats()
    print(f"\nslow renderer (1.5x real time): {st['frames_out']} frames in {wall:.1f} s, "
          f"{st['underrun_frames']} underrun frames in {st['underrun_episodes']} episodes, av_skew {enc['av_skew_s']}")
    assert st["underrun_frames"] > 0 and st["underrun_episodes"] > 0
    assert st["frames_out"] >= 0.8 * 8.0 * s.video.fps  # the broadcast kept its pace: no stall
    assert enc["av_skew_s"] == 0.0  # every frame carried exactly its audio
    assert st["audio_samples_out"] == st["frames_out"] * s.samples_per_frame
    assert d.renderers.active.name == "slow"  # slow but inside the deadline: not a failure


@pytest.mark.timeout(120)
def test_fast_renderer_is_held_back_and_memory_stays_bounded(tmp_path):
    s = settings(tmp_path, "renderer.lookahead_chunks=2")
    fast = PaintRenderer(128, 128, name="fast")
    d = Daemon(s, renderer_factory=lambda _s: fast)
    samples = run_for(d, 8.0, sample=lambda dd: (len(dd.playout.lookahead), dd.status()["rss_bytes"]))
    depth = max(n for n, _ in samples)
    rss = [r for _, r in samples]
    print(f"\nfast renderer: max look-ahead {depth} chunks (bound 2), renderer calls {fast.calls}, "
          f"RSS {rss[len(rss) // 4] / 2**20:.1f} -> {rss[-1] / 2**20:.1f} MiB")
    assert depth <= 2
    # it rendered only what was aired plus the bounded look-ahead (+1 in hand), not as fast as it could
    assert fast.calls <= d.playout.pacer.stats()["chunks_out"] + 2 + 1


@pytest.mark.timeout(120)
def test_failing_renderer_falls_back_to_still_with_no_gap_and_recovers(tmp_path):
    s = settings(tmp_path, "renderer.fallback_retry_initial_s=0.5")
    built = []

    def factory(_s):
        # its third chunk: the engine loads once the first frame is out, so which chunk index it gets first varies
        r = PaintRenderer(128, 128, fail_calls={3} if not built else set(), name="engine")
        built.append(r)
        return r

    d = Daemon(s, renderer_factory=factory)
    events = []
    d.events.subscribe(lambda e: events.append(e) if e["type"] == "renderer_changed" else None)
    d.start()
    try:  # renderer_changed comes as the change airs, a look-ahead after the render thread switched
        until(lambda: len(built) == 2 and events and events[-1]["renderer"] == "engine"
              and any(e["reason"] == "failed" for e in events), 60, "the fallback and the engine back on air")
    finally:
        d.close()
    changes = [(e["previous"], e["renderer"], e["reason"]) for e in events]
    print(f"\nrenderer changes: {changes}")
    assert ("engine", "still", "failed") in changes
    assert changes[-1][1] == "engine" and len(built) == 2  # retried after backoff and back on the engine
    info = read_media(tmp_path / "rec.flv")
    assert max_gap(info.video_pts) <= 0.04 + 1e-3 and abs(info.audio_end - info.video_end) < 0.04


@pytest.mark.timeout(120)
def test_status_readiness_and_metrics_follow_the_air_not_the_renderer_on_duty(tmp_path):
    # The engine fails once: the still renderer goes on duty at once, its frames air a look-ahead later. Meanwhile
    # viewers still see the engine's frames, and status, the readiness probe's vitals and the metrics say so.
    from prometheus_client import generate_latest

    from flashtalk_live.metrics import metrics_registry

    s = settings(tmp_path, "renderer.fallback_retry_initial_s=60", "renderer.lookahead_chunks=3")
    d = Daemon(s, renderer_factory=lambda _s: PaintRenderer(128, 128, fail_calls={3}, name="engine"))
    samples: list[tuple] = []
    seen = set()

    def sample() -> bool:
        # the vitals first: the air only goes engine -> still here, so a status read after them that still shows
        # the engine on air proves the vitals saw no fallback yet (read the other way round, the air may flip between)
        v = d.vitals()
        r = d.status()["renderer"]
        samples.append((r["active"], r["on_air"], r["on_fallback"], v.fallback_s))
        seen.add(r["on_air"])
        return "engine" in seen and r["on_air"] == "still"

    d.start()
    try:
        until(sample, 60, "the engine on air, then the still fallback", every_s=0.01)
        body = generate_latest(metrics_registry(d.status)).decode()
    finally:
        d.close()
    between = [x for x in samples if x[0] == "still" and x[1] == "engine"]
    assert between, samples[-10:]  # the look-ahead: on duty, not yet on air
    assert all(not on_fallback and fallback is None for _, _, on_fallback, fallback in between), between
    active, on_air, on_fallback, fallback = samples[-1]
    assert on_air == "still" and on_fallback and fallback is not None and fallback < 5
    assert 'flashtalk_renderer_on_air{renderer="still"} 1.0' in body
    assert "flashtalk_renderer_on_fallback 1.0" in body


@pytest.mark.timeout(120)
def test_metrics_status_runtime_outputs_and_watchdog(tmp_path, monkeypatch):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    s = settings(tmp_path, f'output_policy.file_dirs=["{tmp_path}"]')  # output_add writes only inside file_dirs
    d = Daemon(s)
    d.start()
    try:
        msgs = _received(notify, 3.0)
        assert any(m.startswith("READY=1") for m in msgs)
        assert sum(m == "WATCHDOG=1" for m in msgs) >= 5  # every 0.2 s while frames advance

        body = urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5).read().decode()
        for name in ("flashtalk_queue_seconds", "flashtalk_av_skew_seconds", "flashtalk_render_rtf",
                     'flashtalk_underrun_frames_total{where="clip"} 0.0', 'flashtalk_underrun_frames_total{where="idle"}', 'flashtalk_endpoint_up{output="rec",state="up"} 1.0',
                     "flashtalk_endpoint_reconnects_total", "flashtalk_process_rss_bytes", 'flashtalk_state{state="on_air"} 1.0'):
            assert name in body, name

        with Client(f"ipc://{tmp_path / 'state'}/control.sock") as c:
            extra = tmp_path / "extra.flv"
            assert c.call("output_add", name="extra", url=str(extra))["ok"]
            time.sleep(2.5)
            names = [o["name"] for o in c.call("outputs")["outputs"]]
            assert names == ["rec", "extra"]
            assert c.call("output_remove", name="extra")["ok"]
            assert [o["name"] for o in c.status()["outputs"]] == ["rec"]
        info = read_media(extra)
        assert info.video_packets > 25 and info.keyframes and info.keyframes[0] == info.video_pts[0]

        # A frozen broadcast loop stops feeding the watchdog: make encode() hang for a while.
        freeze = threading.Event()
        real_encode = d.encoder.encode

        def frozen(*a, **k):
            freeze.wait(2.0)
            return real_encode(*a, **k)

        d.encoder.encode = frozen
        time.sleep(0.3)  # let the loop enter the frozen call
        while True:  # drain datagrams sent before the freeze
            try:
                notify.recv(1024)
            except socket.timeout:
                break
        got = _received(notify, 1.2)
        freeze.set()
        d.encoder.encode = real_encode
        assert "WATCHDOG=1" not in got
    finally:
        d.close()
    tail = []
    while True:
        try:
            tail.append(notify.recv(1024).decode())
        except socket.timeout:
            break
    assert "STOPPING=1" in tail


@pytest.mark.timeout(120)
def test_set_avatar_through_the_control_socket_changes_the_picture_at_a_chunk_boundary(tmp_path):
    from flashtalk_live.images import encode_png

    d = Daemon(settings(tmp_path, "renderer.lookahead_chunks=1", f'ingest.avatar_dirs=["{tmp_path}"]'))
    d.start()
    try:
        time.sleep(1.5)
        red = np.zeros((64, 64, 3), np.uint8)
        red[..., 0] = 230
        with Client(f"ipc://{tmp_path / 'state'}/control.sock") as c:
            assert c.call("set_avatar", encode_png(red), prompt="a red square")["ok"]
            (tmp_path / "blue.png").write_bytes(encode_png(np.dstack([np.zeros((64, 64, 2), np.uint8),
                                                                     np.full((64, 64), 230, np.uint8)])))
            time.sleep(3.0)
            assert c.call("set_avatar", image=str(tmp_path / "blue.png"))["ok"]
            time.sleep(4.0)
    finally:
        d.close()
    import av

    with av.open(str(tmp_path / "rec.flv")) as cont:
        means = [f.to_ndarray(format="rgb24").reshape(-1, 3).mean(axis=0) for f in cont.decode(video=0)]
    kinds = ["red" if m[0] > 150 and m[2] < 80 else "blue" if m[2] > 150 and m[0] < 80 else "portrait" for m in means]
    # portrait first, then red, then blue, each change once, on a chunk boundary
    runs = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
    assert runs == ["portrait", "red", "blue"], runs
    changes = [i for i in range(1, len(kinds)) if kinds[i] != kinds[i - 1]]
    assert all(i % d.s.video.chunk_frames == 0 for i in changes), changes


class HangingRenderer(PaintRenderer):
    """Renders normally, then hangs in its render call number `hang_on` (1: its first chunk) until `release` is set
    (a stuck GPU call). Counted in calls, not chunk indices: the engine loads once the first frame is out, so the
    index of its first chunk varies."""

    def __init__(self, *a, hang_on: int, release: threading.Event, **k):
        super().__init__(*a, **k)
        self.hang_on, self.release = hang_on, release

    def render(self, chunk):
        if self.calls + 1 == self.hang_on:
            self.release.wait()
        return super().render(chunk)


@pytest.mark.timeout(120)
def test_hung_engine_is_abandoned_within_the_lookahead_and_retried_after_it_returns(tmp_path):
    s = settings(tmp_path, "renderer.fallback_retry_initial_s=0.5", "renderer.lookahead_chunks=3",
                 "renderer.deadline_factor=2.0")
    release = threading.Event()
    built = []

    def factory(_s):
        r = HangingRenderer(128, 128, name="engine", hang_on=3 if not built else -1, release=release)
        built.append(r)
        return r

    d = Daemon(s, renderer_factory=factory)
    changes = []
    d.events.subscribe(lambda e: changes.append((e["renderer"], e["reason"])) if e["type"] == "renderer_changed" else None)
    d.start()
    try:
        deadline = time.monotonic() + 30
        while ("still", "failed") not in changes and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ("still", "failed") in changes
        time.sleep(3.0)
        assert len(built) == 1  # no second engine while the first is still stuck in its call
        assert d.renderers.status()["active"] == "still"
        release.set()  # the stuck call returns: the engine may be loaded again
        deadline = time.monotonic() + 30
        while changes[-1] != ("engine", "ready") and time.monotonic() < deadline:
            time.sleep(0.1)
        st = d.playout.pacer.stats()
    finally:
        release.set()
        d.close()
    print(f"\nrenderer changes: {changes}; underrun frames {st['underrun_frames']}")
    assert changes[-1] == ("engine", "ready") and len(built) == 2
    assert st["underrun_frames"] == 0  # abandoned at 2 chunks while 3 were buffered: no frame was late
    assert "abandoned" in (d.renderers.last_error or "")
