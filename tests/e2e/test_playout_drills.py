"""The long playout drills of issue 10: two real daemon processes, run at the same time, each fed tone clips at a
fixed speech duty cycle for more than 3 minutes of air, with its renderer slowed by the operator drills:

* the tiny FlashTalk release (random weights, tiny profile) at `drill_slowdown = 1.5` with jitter, 60% duty cycle;
  idle between clips airs from the idle bank;
* the still renderer at `drill_slowdown = 2.0` with jitter, 40% duty cycle.

Checked from each daemon's counters (status and /metrics) and from its recording decoded with PyAV: no underrun
frame inside a clip, every clip's tone on air from its announced `started` media time to its `finished`, once, in
order, and nowhere else; with FlashTalk, once the bank is ready the model draws exactly the chunks that carry speech
(idle costs no render call) while the bank's served count grows. Nothing asserts on timing: a busy machine only
makes the renderers slower still, which the admission gate measures and absorbs (both drills stay under their floor,
docs/broadcast.md). Both drills run at once (their render calls mostly sleep), so the file costs one drill's wall
time: about 4 minutes. (Started early, overlapping the rest of the suite, the FlashTalk drill's renderer fell below
its floor on a 2-core box even at nice -10: the drills need the box to themselves, as a room does: marked
`alone`, they run with no other test of a `pytest -n` run and no background job beside them.)
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from flashtalk_live.checkpoints.fake import write_fake_release

from support.air import band_power, decode_audio_mono
from support.audiogen import encode
from support.background import wait_all
from support.daemon_harness import NEW_FRAMES, TINY_PROFILE, Collector, DaemonProcess, queue_ids
from support.rtmp_harness import read_media


FPS, CF = 25, NEW_FRAMES  # the daemon's frame rate; the tiny profile's new frames per chunk (the production length)
CHUNK_S = CF / FPS
AIR_S = 180.0  # the "at least 3 minutes of air" of pushing clips

pytestmark = pytest.mark.alone  # under `pytest -n N`, no other test beside the drills (tests/support/box.py)


@dataclass
class Drill:
    name: str
    settings: list[str]
    clip_chunks: int  # clips of whole chunks: a clip's last chunk is not padded with idle the renderer must draw
    duty: float  # clip seconds / air seconds
    bank: bool  # idle from the idle bank (FlashTalk), else the still renderer's idle
    freqs: list[float] = field(default_factory=list)

    @property
    def clip_s(self) -> float:
        return self.clip_chunks * CHUNK_S

    @property
    def period_s(self) -> float:
        return self.clip_s / self.duty

    @property
    def n_clips(self) -> int:
        return int(np.ceil(AIR_S / self.period_s))


@dataclass
class Run:
    """What a drill read back from its daemon: events, clip ids, status and metrics at the end, bank samples."""

    drill: Drill
    rec: Path
    ids: list[str] = field(default_factory=list)
    events: list[dict] = field(default_factory=list)
    status: dict = field(default_factory=dict)
    metrics: str = ""
    idle_windows: list[tuple[int, int, int, int]] = field(default_factory=list)  # (calls, served) before, after
    calls_at_first_push: int = 0
    replayed_at_first_push: int = 0  # idle chunks the stopgap loop replayed (the drilled still renderer at start-up)
    error: BaseException | None = None


def renderer_calls(st: dict) -> int:
    """The FlashTalk renderer's render() calls so far (its per-call timings' count)."""
    return st["renderer"]["drift"]["chunk_s"]["count"]


def until(c, pred, timeout_s: float, what: str) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = c.status()
        if pred(st):
            return st
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def idle_window(c, min_served: int = 2) -> tuple[int, int, int, int]:
    """(calls, served) before and after at least `min_served` idle chunks aired from the bank."""
    st = c.status()
    calls, served = renderer_calls(st), st["render_ahead"]["idle_bank"]["served_chunks"]
    st = until(c, lambda s: s["render_ahead"]["idle_bank"]["served_chunks"] >= served + min_served, 60,
               "idle chunks from the bank")
    return calls, served, renderer_calls(st), st["render_ahead"]["idle_bank"]["served_chunks"]


def drive(d: DaemonProcess, run: Run) -> None:
    """Start the daemon, wait for its renderer (and bank), push one clip every period, read everything back."""
    drill = run.drill
    try:
        d.start(timeout_s=60)
        ev = d.events()
        with d.client(timeout_s=30) as c:
            ev.sync(c)
            col = Collector(ev)
            if drill.bank:
                until(c, lambda s: s["renderer"]["active"] == "flashtalk"
                      and s["render_ahead"]["idle_bank"]["state"] == "ready", 300, "FlashTalk and its idle bank")
                run.idle_windows.append(idle_window(c))
                st = c.status()
                run.calls_at_first_push = renderer_calls(st)
                run.replayed_at_first_push = st["render_ahead"]["idle_replayed_chunks"]
            t0 = time.monotonic()
            for i, f in enumerate(drill.freqs):
                time.sleep(max(0.0, t0 + i * drill.period_s - time.monotonic()))
                run.ids.append(c.enqueue(encode("wav_s16", seconds=drill.clip_s, freq=f))["segment_id"])
            deadline = time.monotonic() + 120  # the last clip's head start and its air time, with room
            while run.ids[-1] not in queue_ids(col.seen, "finished") and time.monotonic() < deadline:
                time.sleep(0.25)
            if drill.bank:
                run.idle_windows.append(idle_window(c))
            else:
                time.sleep(1.0)
            run.status = c.status()
            port = run.status["metrics_port"]
            run.metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        run.events = col.stop()
        ev.close()
        assert d.stop() == 0
    except BaseException as e:  # noqa: BLE001 - reported by the drill's test
        run.error = e
        d.kill()


class Drills:
    """Both drills, started together (their render calls mostly sleep, so the file costs one drill's wall time); the
    tests join them and check what they read back."""

    def __init__(self, root: Path) -> None:
        self.root = root
        rel = write_fake_release(root / "models")
        (root / "tiny.toml").write_text(TINY_PROFILE)
        common = ["encoder.video_bitrate=100000", f"video.chunk_frames={CF}"]
        plan = [
            Drill("flashtalk", common + [
                'renderer.kind="flashtalk"', f'model.weights_dir="{rel.weights_dir}"',
                f'model.wav2vec_dir="{rel.wav2vec_dir}"',
                f'model.profile="{root / "tiny.toml"}"', 'model.device="cpu"', 'model.dtype="float32"',
                "video.width=48", "video.height=80", "renderer.idle_bank_chunks=3",
                "renderer.drill_slowdown=1.5", "renderer.drill_jitter_s=0.1",
                # the drill stretches calls to 1.5x and a busy box stretches them more: not a hung engine
                "renderer.deadline_factor=20",
            ], clip_chunks=6, duty=0.6, bank=True),
            Drill("still", common + ["video.width=64", "video.height=64",
                                     "renderer.drill_slowdown=2.0", "renderer.drill_jitter_s=0.05"],
                  clip_chunks=4, duty=0.4, bank=False),
        ]
        self.runs: dict[str, tuple[Run, DaemonProcess]] = {}
        self.threads = []
        for drill in plan:
            drill.freqs = [300.0 + 150.0 * i for i in range(drill.n_clips)]  # multiples of 25 Hz: one tone per window
            rec = root / f"{drill.name}.flv"
            # The room's daemon is the box's main job in production: the scheduler's priority a dedicated box gives.
            d = DaemonProcess(root / drill.name, [{"name": "rec", "url": str(rec)}], drill.settings, nice=-10)
            run = Run(drill, rec)
            self.runs[drill.name] = (run, d)
            self.threads.append(threading.Thread(target=drive, args=(d, run), name=f"drill-{drill.name}", daemon=True))
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()

    def wait(self) -> dict[str, tuple[Run, DaemonProcess]]:
        for t in self.threads:
            t.join(max(1.0, 900 - (time.monotonic() - self.t0)))
        print(f"\nboth drills ran in {time.monotonic() - self.t0:.0f} s of wall time")
        return self.runs

    def kill(self) -> None:
        for _, d in self.runs.values():
            d.kill()


@pytest.fixture(scope="module")
def drills(tmp_path_factory) -> Iterator[dict[str, tuple[Run, DaemonProcess]]]:
    wait_all(1500)  # the box to themselves: no background job (the type check, the image build) beside them
    d = Drills(tmp_path_factory.mktemp("drills"))
    yield d.wait()
    d.kill()


def check_drill(run: Run, d: DaemonProcess) -> None:
    """The checks common to both drills: counters, events, and the recording."""
    if run.error is not None:
        raise AssertionError(f"{run.drill.name} drill failed: {run.error!r}\n{d.log_tail()}") from run.error
    drill, st, ev = run.drill, run.status, run.events
    b, ra = st["broadcast"], st["render_ahead"]
    started = [e for e in ev if e["type"] == "started" and e.get("source") == "queue"]
    finished = [e for e in ev if e["type"] == "finished" and e.get("source") == "queue"]
    print(f"\n{drill.name}: {len(run.ids)} clips of {drill.clip_s:.2f} s every {drill.period_s:.2f} s "
          f"({drill.duty:.0%}), render rate {ra['render_rate']}, underrun frames clip={b['underrun_frames_clip']} "
          f"idle={b['underrun_frames_idle']}, chunks waiting {ra['waiting_chunks_total']}, over floor "
          f"{ra['clips_over_floor']}, air {b['media_time_s']} s; clip starts (s) "
          f"{[e['media_time_s'] for e in started]}")

    # No underrun frame inside a clip, in status and in /metrics; the gate held clips back. A clip admitted over the
    # floor (without its whole head start) is allowed only when the box made the renderer too slow to sustain the duty
    # cycle at all (measured rate x duty near 1: the rest of the suite runs beside the drills); none airs a gap.
    assert b["underrun_frames_clip"] == 0
    m = re.search(r'^flashtalk_underrun_frames_total\{where="clip"\} (\S+)$', run.metrics, re.M)
    assert m is not None and float(m.group(1)) == 0.0
    assert ra["waiting_chunks_total"] > 0
    assert ra["clips_over_floor"] == 0 or ra["render_rate"] * drill.duty >= 0.95, ra
    # Every clip aired once, in order, for exactly its duration on the air's clock; nothing was cut.
    assert [e["segment_id"] for e in started] == run.ids and [e["segment_id"] for e in finished] == run.ids
    assert not queue_ids(ev, "interrupted") and not queue_ids(ev, "dropped")
    assert [f["frame"] - s["frame"] for s, f in zip(started, finished)] == [drill.clip_chunks * CF - 1] * len(run.ids)
    assert finished[-1]["media_time_s"] - started[0]["media_time_s"] >= AIR_S - drill.period_s

    # The recording: each clip's tone from its announced start to its finish, and nowhere else.
    assert not read_media(run.rec).errors
    x, first_pts, rate = decode_audio_mono(run.rec)
    win = rate // FPS  # one frame of air
    p0 = band_power(x, rate, drill.freqs[0], win)
    # One constant origin for the file, from the first tone's onset (the encoder's first pts need not be frame 0).
    origin = first_pts + np.flatnonzero(p0 > 0.25 * p0.max())[0] * win / rate - started[0]["frame"] / FPS
    air_frame = (first_pts + np.arange(len(p0)) * win / rate - origin) * FPS  # air frame at each window's start
    for s, f, freq in zip(started, finished, drill.freqs):
        p = band_power(x, rate, freq, win)
        inside = (air_frame >= s["frame"] + 2) & (air_frame <= f["frame"] - 2)
        ref = float(np.median(p[inside]))
        on = p > 0.2 * ref
        assert on[inside].all(), (s["segment_id"], freq, "the tone has a gap: the clip stalled on air")
        where = air_frame[on]
        assert where.min() >= s["frame"] - 2 and where.max() <= f["frame"] + 2, \
            (s["segment_id"], freq, "the tone is on air outside its announced time", where.min(), where.max())
        assert abs(where.min() - s["frame"]) <= 2, (s["segment_id"], "the tone does not start at `started`")


@pytest.mark.timeout(1200)
def test_tiny_flashtalk_at_one_and_a_half_times_real_time_and_60_percent_speech_never_stalls_a_clip(drills):
    run, d = drills["flashtalk"]
    check_drill(run, d)
    st = run.status
    r, ra, bank = st["renderer"], st["render_ahead"], st["render_ahead"]["idle_bank"]
    started = [e for e in run.events if e["type"] == "started" and e.get("source") == "queue"]
    finished = [e for e in run.events if e["type"] == "finished" and e.get("source") == "queue"]
    # A clip that follows idle starts on a chunk's first frame (a re-plan may move the chunk grid: within-chunk
    # re-plans), and the drill's clips never share a chunk: each carries ceil(frames / CF) chunks of speech.
    speech_chunks = sum(-(-(f["frame"] - s["frame"] + 1) // CF) for s, f in zip(started, finished))
    calls = renderer_calls(st) - run.calls_at_first_push
    print(f"flashtalk: {calls} render calls after the bank was ready, {speech_chunks} chunks of speech; "
          f"bank {bank['chunks_ready']}/{bank['chunks_target']}, served {bank['served_chunks']}, idle windows "
          f"(calls, served before; after) {run.idle_windows}; per call {r['drift']['chunk_s']}")
    assert r["active"] == "flashtalk" and r["failures"] == 0, r
    assert ra["render_rate"] >= 1.45  # the drill really made every call take 1.5x the chunk (or longer)
    # Idle from the bank: while idle aired before the first clip and after the last, the model drew nothing and the
    # bank served; over the whole drill the model drew exactly the chunks that carry speech.
    assert bank["state"] == "ready" and bank["from_render"] == bank["chunks_target"]
    for calls0, served0, calls1, served1 in run.idle_windows:
        assert served1 >= served0 + 2 and calls1 == calls0
    assert calls == speech_chunks
    assert bank["served_chunks"] >= run.idle_windows[0][1] + len(run.ids)  # at least one bank chunk between clips
    assert ra["idle_replayed_chunks"] == run.replayed_at_first_push  # the stopgap loop was not needed once on duty


@pytest.mark.timeout(1200)
def test_still_renderer_at_half_real_time_and_40_percent_speech_never_stalls_a_clip(drills):
    run, d = drills["still"]
    check_drill(run, d)
    ra = run.status["render_ahead"]
    assert run.status["renderer"]["active"] == "still"
    assert ra["render_rate"] >= 1.9  # every call took twice the chunk (or longer)
    # The still renderer keeps no bank (its idle is free): idle between clips replays its own idle chunk.
    assert ra["idle_bank"] is None or ra["idle_bank"]["served_chunks"] == 0
    assert ra["idle_replayed_chunks"] > 0
