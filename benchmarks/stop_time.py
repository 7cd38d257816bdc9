"""SIGTERM to exit of a real daemon process with a clip on air (issue 21 item 5), over N runs.

    python benchmarks/stop_time.py              # 5 runs, still renderer, one file recording
    python benchmarks/stop_time.py --runs 10 --set renderer.lookahead_chunks=6
    python benchmarks/stop_time.py --rtmp --size 448x768   # plus an RTMP output to a loopback nginx-rtmp

Each run starts `python -m flashtalk_live run` (tests/e2e/daemon_harness.py: a small room, ipc + tcp control, one
.flv recording), queues a 20 s tone, waits for its `started` event, sends SIGTERM and times the wait for the process
to exit. It then reads the daemon's JSON log and splits the time at its milestones (the `signal` line, `stopping`,
`ingest_stopped`, `stopped`): where a slow stop spends its time. Prints one table row per run and the median/max.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from support.audiogen import encode  # noqa: E402
from support.daemon_harness import DaemonProcess, wait_for  # noqa: E402
from support.rtmp_harness import NginxRtmp, free_port  # noqa: E402

MILESTONES = ("signal", "event_stopping", "event_endpoint_down", "ingest_stopped", "stopped")


def _ts(line: dict) -> float | None:
    t = line.get("timestamp")
    if not isinstance(t, str):
        return None
    return datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()


def one_run(tmp: Path, i: int, extra: list[str], rtmp: str | None) -> dict:
    outputs = [{"name": "rec", "url": str(tmp / f"rec{i}.flv")}]
    if rtmp:
        outputs.append({"name": "live", "url": rtmp})
    d = DaemonProcess(tmp / f"room{i}", outputs, extra).start(120)
    ev = d.events()
    try:
        with d.client(timeout_s=30) as c:
            ev.sync(c)
            seg = c.enqueue(encode("wav_s16", seconds=20.0, freq=500.0))["segment_id"]
            wait_for(ev, lambda e: e["type"] == "started" and e.get("segment_id") == seg, 120)
        time.sleep(0.5)
    finally:
        ev.close()
    assert d.proc is not None
    t0 = time.time()
    d.proc.send_signal(signal.SIGTERM)
    try:
        d.proc.wait(60)
    except subprocess.TimeoutExpired:
        d.kill()
        raise
    total = time.time() - t0
    marks = {"sigterm": t0}
    for line in d.log_lines():
        name = line.get("event")
        if name in MILESTONES and name not in marks:
            ts = _ts(line)
            if ts is not None and ts >= t0 - 1:
                marks[name] = ts
    marks["exit"] = t0 + total
    return {"total": total, "rc": d.proc.returncode, "marks": marks}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--set", action="append", default=[], help="a config override for the daemon (repeatable)")
    ap.add_argument("--size", default="256x256", help="video WIDTHxHEIGHT (448x768 is the default room's)")
    ap.add_argument("--rtmp", action="store_true", help="add an RTMP output to a loopback nginx-rtmp")
    a = ap.parse_args()
    w, h = a.size.split("x")
    extra = [f"video.width={w}", f"video.height={h}", *a.set]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"# machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}; "
          f"commit {commit}")
    print(f"# SIGTERM to exit, clip on air, {a.size}, outputs: file{' + rtmp' if a.rtmp else ''}; columns after "
          "'total': seconds from SIGTERM to each log milestone")
    cols = ("sigterm",) + MILESTONES + ("exit",)
    print(f"{'run':>3} {'rc':>3} {'total_s':>8}  " + " ".join(f"{c:>15}" for c in cols[1:]))
    totals = []
    with tempfile.TemporaryDirectory(prefix="ftl-stop-") as td:
        nginx = NginxRtmp(Path(td) / "nginx", free_port(), free_port()) if a.rtmp else None
        if nginx is not None:
            nginx.start()
        try:
            rows = [one_run(Path(td), i, extra, nginx.url(f"s{i}") if nginx else None) for i in range(a.runs)]
        finally:
            if nginx is not None:
                nginx.kill()
        for i, r in enumerate(rows):
            totals.append(r["total"])
            t0 = r["marks"]["sigterm"]
            cells = [f"{r['marks'][c] - t0:15.3f}" if c in r["marks"] else f"{'-':>15}" for c in cols[1:]]
            print(f"{i:>3} {r['rc']:>3} {r['total']:8.3f}  " + " ".join(cells), flush=True)
    print(f"median {statistics.median(totals):.3f} s, max {max(totals):.3f} s over {len(totals)} runs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
