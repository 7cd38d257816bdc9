"""Issue 20: the health probes of a real daemon process, as a kubelet would poll them.

* readiness answers 503 until the room is on air, then 200; startup likewise; liveness 200 all along;
* liveness stays 200 through a slow renderer drill, a full disk (degraded, on air) and an endpoint outage;
* liveness turns 503 when the broadcast loop stops. The loop's thread alone is stopped (ptrace, from this test
  process; support/threadstop.py) so the daemon's HTTP thread can still answer: that is the 503 a kubelet would read
  from a wedged loop. A SIGSTOP of the whole process is tested too, and honestly: it answers nothing (the probe times
  out, which the kubelet counts as a failure), and 200 again after SIGCONT;
* a room configured for FlashTalk whose model cannot load is not ready on the still fallback until
  probes.ready_fallback_s, then ready with that reason;
* a room loading the (tiny, CPU) FlashTalk model stays live through the load and becomes ready when the model airs.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from support.box_faults import fill
from support.daemon_harness import DaemonProcess
from support.threadstop import thread_ids, thread_stopped
from support.waiting import until


def probe(port: int, name: str, timeout_s: float = 5.0) -> tuple[int, dict] | None:
    """(status, JSON body) of GET /<name>, or None when nothing answered in time (what a kubelet calls a timeout)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{name}", timeout=timeout_s) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
    except (OSError, TimeoutError):
        return None


def metrics_port(d: DaemonProcess) -> int:
    with d.client() as c:
        return until(lambda: c.status().get("metrics_port"))


class Poller:
    """Polls one probe every `every_s` on a thread, keeping every answer (None for no answer)."""

    def __init__(self, port: int, name: str, every_s: float = 0.25) -> None:
        self.answers: list[tuple[int, dict] | None] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(port, name, every_s), daemon=True)
        self._t.start()

    def _run(self, port: int, name: str, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.answers.append(probe(port, name))

    def stop(self) -> list[tuple[int, dict] | None]:
        self._stop.set()
        self._t.join(10)
        return self.answers


def test_ready_only_once_on_air_and_live_through_a_slow_renderer_drill(daemon_factory):
    # The still renderer drilled 6x slower than real time: the first frame waits ~7 s for the first chunk, then
    # the pacer holds frames through underruns for as long as the drill lasts.
    d = daemon_factory(extra=["renderer.drill_slowdown=6"]).start()
    port = metrics_port(d)
    first = {name: probe(port, name) for name in ("readyz", "startupz", "livez")}
    with d.client() as c:
        assert c.status()["state"] == "starting", "the drill should hold the first frame back several seconds"
    assert first["readyz"][0] == 503 and "not on air yet" in first["readyz"][1]["reason"]
    assert first["startupz"][0] == 503
    assert first["livez"][0] == 200 and "nothing aired yet" in first["livez"][1]["reason"]
    live = Poller(port, "livez")
    answers = []
    ready = until(lambda: answers.append(probe(port, "readyz")) or (answers[-1] or (0,))[0] == 200, 60, every_s=0.1)
    assert ready
    with d.client() as c:
        st = c.status()
    assert st["state"] == "on_air" and st["broadcast"]["frames_out"] > 0
    assert all(a is not None and a[0] == 503 for a in answers[:-1]), answers  # never ready before on air
    assert answers[-1][1] == {"probe": "readyz", "ok": True, "reason": "on air with the still renderer"}
    assert probe(port, "startupz")[0] == 200
    # the drill keeps underrunning: liveness holds
    with d.client() as c:
        under0 = c.status()["broadcast"]["underrun_frames"]
        until(lambda: c.status()["broadcast"]["underrun_frames"] > under0 + 50, 60)
    got = live.stop()
    assert len(got) > 10 and all(a is not None and a[0] == 200 for a in got), got
    assert d.stop() == 0


@pytest.mark.rtmp
@pytest.mark.timeout(240)
def test_live_through_a_full_disk_and_an_endpoint_outage(tmp_path, tmpfs, nginx_rtmp):
    state = tmpfs(tmp_path / "state", "24m")
    srv = nginx_rtmp()
    d = DaemonProcess(state, [{"name": "live", "url": srv.url("room")},
                              {"name": "rec", "url": "{state_dir}/rec/live-{n}.flv"}],
                      ["storage.min_free_bytes=4194304", "storage.min_free_percent=0",
                       "storage.spool_reserve_bytes=2097152", "storage.check_interval_s=0.2",
                       "output_policy.backoff_max_s=2"]).start()
    try:
        port = metrics_port(d)
        with d.client() as c:
            until(lambda: c.status()["state"] == "on_air", 30)
            live, ready = Poller(port, "livez"), Poller(port, "readyz")
            # the endpoint goes away (nginx killed): the output reconnects in the background
            srv.kill()
            until(lambda: any(o["name"] == "live" and o["state"] != "up" for o in c.status()["outputs"]), 30)
            # and the disk fills: degraded, recordings paused, still on air
            fill(state, "low", leave=1 << 20)
            until(lambda: c.status()["storage"]["degraded"], 30)
            frames0 = c.status()["broadcast"]["frames_out"]
            until(lambda: c.status()["broadcast"]["frames_out"] > frames0 + 100, 60)  # both faults, for 4 s of air
            st = c.status()
            assert st["storage"]["degraded"] and st["state"] == "on_air"
            assert [o["state"] for o in st["outputs"] if o["name"] == "live"] != ["up"]
        got, got_ready = live.stop(), ready.stop()
        assert len(got) > 10 and all(a is not None and a[0] == 200 for a in got), got
        # still on air: the room stays ready too (alerts, not probes, report a degraded disk or a dead endpoint)
        assert all(a is not None and a[0] == 200 for a in got_ready), got_ready
    finally:
        d.kill()


def test_live_fails_when_the_broadcast_loop_stops(daemon_factory):
    d = daemon_factory(extra=["probes.live_stall_s=2"]).start()
    port = metrics_port(d)
    until(lambda: (probe(port, "startupz") or (0,))[0] == 200, 30)
    assert probe(port, "livez")[0] == 200
    assert d.proc is not None
    tid = thread_ids(d.proc.pid, "ftl-broadcast")[0]
    stalled = None
    for _attempt in range(20):
        try:
            with thread_stopped(tid):
                # Stopped while holding the GIL, the whole interpreter waits and nothing answers: try again.
                if probe(port, "livez", timeout_s=3) is None:
                    continue
                stalled = until(lambda: (a := probe(port, "livez")) and a[0] == 503 and a, 30, every_s=0.5)
                not_ready = probe(port, "readyz")
                break
        except PermissionError as e:
            pytest.skip(f"cannot ptrace the daemon's thread here: {e}")
        finally:
            time.sleep(0.2)
    assert stalled is not None, "the broadcast thread was never stopped outside the GIL"
    assert stalled[1]["ok"] is False and "broadcast stalled: no frame for" in stalled[1]["reason"]
    assert not_ready is not None and not_ready[0] == 503 and "stalled" in not_ready[1]["reason"]
    # resumed: the loop catches up and the probe is 200 again (a kubelet under its failureThreshold leaves it be)
    assert until(lambda: (probe(port, "livez") or (0,))[0] == 200, 30)

    # SIGSTOP stops every thread, the HTTP one too: no answer at all, which a kubelet counts as a failed probe
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        assert probe(port, "livez", timeout_s=3) is None
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    assert until(lambda: (probe(port, "livez") or (0,))[0] == 200, 30)
    assert d.stop() == 0


def test_ready_on_the_still_fallback_only_after_the_stated_time(daemon_factory, tmp_path):
    # FlashTalk pointed at an empty weights folder: its load fails (and is retried with backoff), the still renderer
    # airs.
    (tmp_path / "no-weights").mkdir()
    d = daemon_factory(extra=["renderer.kind=flashtalk", f'model.weights_dir="{tmp_path / "no-weights"}"',
                              "probes.ready_fallback_s=6"]).start(timeout_s=60)
    port = metrics_port(d)
    until(lambda: (probe(port, "startupz") or (0,))[0] == 200, 60)
    waiting = probe(port, "readyz")
    assert waiting[0] == 503 and "waiting for the flashtalk renderer" in waiting[1]["reason"], waiting
    assert probe(port, "livez")[0] == 200
    ready = until(lambda: (a := probe(port, "readyz")) and a[0] == 200 and a, 60, every_s=0.5)
    assert "on the still fallback for" in ready[1]["reason"] and "flashtalk" in ready[1]["reason"]
    with d.client() as c:
        r = c.status()["renderer"]
    assert r["active"] == "still" and r["on_fallback"] and r["failures"] >= 1
    assert d.stop() == 0


@pytest.mark.timeout(300)
@pytest.mark.alone  # the tiny model on the CPU: no other test of a `pytest -n` run beside it
def test_live_through_a_model_load_and_ready_once_the_model_airs(tmp_path, daemon_factory):
    # The tiny FlashTalk model in the released layout, on the CPU (as tests/e2e/test_flashtalk_daemon.py): the still
    # renderer airs while it loads and warms up, then it takes over at a chunk boundary.
    from flashtalk_live.checkpoints.fake import write_fake_release

    rel = write_fake_release(tmp_path / "models")
    (tmp_path / "tiny.toml").write_text('base = "quality"\nheight = 32\nwidth = 32\nframe_num = 29\nmotion_frames = 1\n')
    d = daemon_factory(extra=[
        'renderer.kind="flashtalk"', f'model.weights_dir="{rel.weights_dir}"', f'model.wav2vec_dir="{rel.wav2vec_dir}"',
        f'model.profile="{tmp_path / "tiny.toml"}"', 'model.device="cpu"', 'model.dtype="float32"',
        "video.chunk_frames=28", "video.width=48", "video.height=80", "renderer.lookahead_chunks=4",
        "renderer.deadline_factor=20", "probes.ready_fallback_s=3600",
    ]).start(timeout_s=60)
    port = metrics_port(d)
    live = Poller(port, "livez")
    answers: list[tuple[int, dict] | None] = []
    until(lambda: answers.append(probe(port, "readyz")) or (answers[-1] or (0,))[0] == 200, 180, every_s=0.25)
    with d.client() as c:
        r = c.status()["renderer"]
    assert r["active"] == "flashtalk" and not r["on_fallback"], r
    got = live.stop()
    waiting = [a for a in answers[:-1] if a is not None and "waiting for the flashtalk renderer" in a[1]["reason"]]
    assert waiting and all(a is not None and a[0] == 503 for a in answers[:-1]), answers
    assert answers[-1][1]["reason"] == "on air with the flashtalk renderer"
    assert len(got) > 4 and all(a is not None and a[0] == 200 for a in got), got
    assert d.stop() == 0
