"""Push to air by kind (issue 23): a real daemon process per renderer, measured from outside and from its status.

For each renderer (the still one, then the tiny FlashTalk release on the CPU as the tests build it; or the GPU row
with --set, e.g. the shipped profile and real weights) and each trial, in this order:

* enqueue_idle:      a 1 s clip enqueued into an idle room (nothing on air, nothing queued for 3 s);
* stream_first_byte: a streamed clip (clip_open, then 200 ms raw PCM pieces at real-time pace) into an idle room;
                     timed from the first piece's send;
* enqueue_behind:    a 1 s clip enqueued while a 3 s clip airs;
* insert / play_now: a 1 s clip inserted / played now while a 6 s clip airs.

Push->air is the clip's `started` event's `mono` (the daemon's CLOCK_MONOTONIC, the same clock as this process's
on Linux) minus the client's monotonic time just before it sent the request. The stage table splits each kind's
median into: the request until its ack (decode, spool commit), the plan's wait at the ack (`planned_in_s`: what
is buffered on air ahead of the clip's first chunk after the re-plan, plus its head start), and the rest (render of
the first chunk, frame store, pacer release to the encoder; the encoder and RTMP are after `started`). The daemon's
own histogram (status.latency.push_to_air, which starts at the ack) is printed beside it.

    python benchmarks/push_to_air.py                     # still, then the tiny FlashTalk on the CPU
    python benchmarks/push_to_air.py --only still --trials 5
    python benchmarks/push_to_air.py --only flashtalk --set model.weights_dir=... --set model.device=cuda
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from support.daemon_harness import DaemonProcess, wait_for  # noqa: E402
from benchmarks.play_now_latency import renderer_rows  # noqa: E402

KINDS = ("enqueue_idle", "stream_first_byte", "enqueue_behind", "insert", "play_now")
RATE, PIECE_S = 48_000, 0.2


def pcm(seconds: float, freq: float) -> bytes:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2").tobytes()


def measure(name: str, settings: list[str], trials: int, tmp: Path) -> dict:
    d = DaemonProcess(tmp / name, [{"name": "rec", "url": str(tmp / f"{name}.flv")}], settings).start(120)
    ev = d.events()
    seen: list[dict] = []
    out: dict[str, list[tuple[float, float, float]]] = {k: [] for k in KINDS}  # (total, ack, planned_in)

    def until(pred) -> dict:  # noqa: ANN001 - an event seen already, or the next one that matches
        return next((e for e in seen if pred(e)), None) or wait_for(ev, pred, 600, seen)

    def started(sid: str) -> dict:
        return until(lambda e: e["type"] == "started" and e.get("segment_id") == sid)

    def finished(sid: str) -> None:
        until(lambda e: e["type"] in ("finished", "interrupted") and e.get("segment_id") == sid
              and not e.get("requeued"))

    try:
        with d.client(timeout_s=60) as c:
            ev.sync(c)
            if "flashtalk" in name:
                wait_for(ev, lambda e: e["type"] == "renderer_changed" and e.get("renderer") == "flashtalk", 600, seen)
            for i in range(trials):
                time.sleep(3.0)  # idle
                t0 = time.monotonic()
                ack = c.enqueue(pcm(1.0, 500 + i), format="pcm_s16le", sample_rate=RATE, channels=1)
                t_ack = time.monotonic()
                s = started(ack["segment_id"])
                out["enqueue_idle"].append((s["mono"] - t0, t_ack - t0, ack.get("planned_in_s", 0.0)))
                finished(ack["segment_id"])

                time.sleep(3.0)
                with c.stream(format="pcm_s16le", sample_rate=RATE, channels=1) as st:
                    sid = st.segment_id
                    first = time.monotonic()
                    got = None
                    for k in range(10):
                        time.sleep(max(0.0, first + k * PIECE_S - time.monotonic()))
                        st.append(pcm(PIECE_S, 600 + 50 * (k % 2)))
                        if k == 0:
                            t_ack = time.monotonic()
                        while got is None and (e := ev.get(0)) is not None:
                            seen.append(e)
                            if e["type"] == "started" and e.get("segment_id") == sid:
                                got = e
                s = got or started(sid)
                out["stream_first_byte"].append((s["mono"] - first, t_ack - first, 0.0))
                finished(sid)

                for kind, on_air_s in (("enqueue_behind", 3.0), ("insert", 6.0), ("play_now", 6.0)):
                    long = c.enqueue(pcm(on_air_s, 300), format="pcm_s16le", sample_rate=RATE, channels=1)
                    started(long["segment_id"])
                    time.sleep(0.5)
                    mode = "enqueue" if kind == "enqueue_behind" else kind
                    t0 = time.monotonic()
                    ack = c.call(mode, pcm(1.0, 900), id=f"{kind}-{i}", format="pcm_s16le", sample_rate=RATE,
                                 channels=1)
                    t_ack = time.monotonic()
                    s = started(ack["segment_id"])
                    out[kind].append((s["mono"] - t0, t_ack - t0, ack.get("planned_in_s", 0.0)))
                    finished(ack["segment_id"])
                    finished(long["segment_id"])  # after play_now: it replays from its start, then finishes
            status = c.status()
        return {"name": name, "trials": trials, "kinds": out, "daemon": status["latency"]["push_to_air"],
                "rate": status["plan"]["render_rate"]}
    finally:
        ev.close()
        d.stop()


def main() -> int:
    rows = renderer_rows(measure, "ftl-p2a-")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, commit {commit}, "
          f"{rows[0]['trials'] if rows else 0} trials per kind, measured from outside (client send -> `started` event's mono)")
    print(f"\n{'renderer':<10} {'kind':<18} {'n':>3} {'p50 s':>6} {'p99 s':>6} {'max s':>6} {'daemon p50':>10} "
          f"{'rate':>5}")
    for r in rows:
        for k in KINDS:
            tot = sorted(x[0] for x in r["kinds"][k])
            if not tot:
                continue
            p99 = tot[min(len(tot) - 1, int(len(tot) * 0.99))]
            dm = r["daemon"].get(k, {}).get("p50_s")
            print(f"{r['name']:<10} {k:<18} {len(tot):>3} {statistics.median(tot):>6.2f} {p99:>6.2f} "
                  f"{max(tot):>6.2f} {dm if dm is not None else '-':>10} {r['rate'] or 0:>5.2f}")
    print(f"\nstages (median seconds): {'renderer':<10} {'kind':<18} {'to ack':>7} {'plan wait':>9} {'render+pace':>11}")
    for r in rows:
        for k in KINDS:
            xs = r["kinds"][k]
            if not xs:
                continue
            tot, ack, plan = (statistics.median(x[i] for x in xs) for i in range(3))
            print(f"{'':<25}{r['name']:<10} {k:<18} {ack:>7.3f} {plan:>9.3f} {max(0.0, tot - ack - plan):>11.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
