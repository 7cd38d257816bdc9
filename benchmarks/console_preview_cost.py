"""The console preview's CPU cost per viewer: a daemon in this process (still renderer), N /preview.mjpeg viewers in
another process; prints the daemon's CPU (cores) with 0, 1 and N viewers, JPEG encodes per second and underruns.

    python benchmarks/console_preview_cost.py [--size 1280x720] [--seconds 15] [--viewers 10] [--fps 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIEWER = r"""
import sys, threading, urllib.request
def watch(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        while r.read1(65536):
            pass
for _ in range(int(sys.argv[2])):
    threading.Thread(target=watch, args=(sys.argv[1],), daemon=True).start()
sys.stdin.read()  # until the benchmark closes our stdin
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--viewers", type=int, default=10)
    ap.add_argument("--fps", type=float, default=5.0, help="console.preview_fps")
    a = ap.parse_args()
    w, h = a.size.split("x")
    from flashtalk_live.daemon import Daemon
    from flashtalk_live.config import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="console-bench-"))
    s = load_settings(None, [
        f'state_dir="{tmp / "state"}"', 'ingest.control=["ipc://{state_dir}/control.sock"]',
        'ingest.events=["ipc://{state_dir}/events.sock"]', f"video.width={w}", f"video.height={h}",
        'encoder.preset="ultrafast"', "metrics.port=0", 'outputs=[]', 'programme.playlist=""',
        f"console.preview_fps={a.fps}",
    ], environ={})
    d = Daemon(s)
    d.start()
    rows = []
    try:
        time.sleep(3.0)  # on air, look-ahead full
        for n in (0, 1, a.viewers):
            viewers = None
            if n:
                viewers = subprocess.Popen([sys.executable, "-c", VIEWER, f"http://127.0.0.1:{d.metrics_port}/preview.mjpeg",
                                            str(n)], stdin=subprocess.PIPE)
                time.sleep(1.0)
            u0, e0, f0 = d.playout.pacer.stats()["underrun_frames"], d.console.preview.encodes, time.process_time()
            t0 = time.monotonic()
            time.sleep(a.seconds)
            dt = time.monotonic() - t0
            cpu = (time.process_time() - f0) / dt
            rows.append((n, cpu, (d.console.preview.encodes - e0) / dt, d.playout.pacer.stats()["underrun_frames"] - u0))
            if viewers is not None:
                viewers.stdin.close()
                viewers.wait(10)
    finally:
        d.close()
    base = rows[0][1]
    print(f"\nconsole preview cost, {a.size} air at {s.video.fps} fps, preview {s.console.preview_width} px wide at "
          f"<= {a.fps} fps, {a.seconds:.0f} s per row (daemon process CPU, all threads)")
    print(f"{'viewers':>8} {'cpu cores':>10} {'over 0 viewers':>15} {'jpeg/s':>8} {'underrun frames':>16}")
    for n, cpu, eps, under in rows:
        print(f"{n:>8} {cpu:>10.3f} {cpu - base:>+15.3f} {eps:>8.2f} {under:>16}")


if __name__ == "__main__":
    main()
