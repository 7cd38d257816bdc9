"""The console preview's CPU cost per viewer and per listener: a daemon in this process (still renderer), N
/preview.mjpeg viewers or N /preview.wav listeners (the programme sound) in another process; prints the daemon's CPU
(cores) with 0, 1 and N of each, JPEG encodes per second, bytes per second sent to each client and underruns.

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
got = [0]
def watch(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        while (b := r.read1(65536)):
            got[0] += len(b)
for _ in range(int(sys.argv[2])):
    threading.Thread(target=watch, args=(sys.argv[1],), daemon=True).start()
sys.stdin.readline()  # the benchmark starts the measured span
got[0] = 0
sys.stdin.readline()  # ... and ends it
print(got[0], flush=True)
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
        for path, n in (("-", 0), ("/preview.mjpeg", 1), ("/preview.mjpeg", a.viewers), ("/preview.wav", 1),
                        ("/preview.wav", a.viewers)):
            viewers = None
            if n:
                viewers = subprocess.Popen([sys.executable, "-c", VIEWER, f"http://127.0.0.1:{d.metrics_port}{path}",
                                            str(n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                time.sleep(1.0)
                viewers.stdin.write("start\n")
                viewers.stdin.flush()
            u0, e0, f0 = d.playout.pacer.stats()["underrun_frames"], d.console.preview.encodes, time.process_time()
            t0 = time.monotonic()
            time.sleep(a.seconds)
            dt = time.monotonic() - t0
            cpu = (time.process_time() - f0) / dt
            sent = 0.0
            if viewers is not None:
                out, _ = viewers.communicate("stop\n", timeout=30)
                sent = int(out.strip() or 0) / dt / n
            rows.append((path, n, cpu, (d.console.preview.encodes - e0) / dt, sent,
                         d.playout.pacer.stats()["underrun_frames"] - u0))
    finally:
        d.close()
    base = rows[0][2]
    print(f"\nconsole preview cost, {a.size} air at {s.video.fps} fps, preview {s.console.preview_width} px wide at "
          f"<= {a.fps} fps, sound {s.encoder.audio_rate} Hz x {s.encoder.audio_channels} as 16-bit WAV, "
          f"{a.seconds:.0f} s per row (daemon process CPU, all threads)")
    print(f"{'stream':>15} {'clients':>8} {'cpu cores':>10} {'over 0 clients':>15} {'jpeg/s':>8} {'kB/s each':>10} "
          f"{'underrun frames':>16}")
    for path, n, cpu, eps, sent, under in rows:
        print(f"{path:>15} {n:>8} {cpu:>10.3f} {cpu - base:>+15.3f} {eps:>8.2f} {sent / 1000:>10.1f} {under:>16}")
    # The one piece of work a sound listener adds, timed alone (the rows above are within the shared machine's noise).
    import numpy as np

    from flashtalk_live.console.preview import pcm16
    ch, spf = s.encoder.audio_channels, s.samples_per_frame
    second = [np.random.default_rng(i).uniform(-0.5, 0.5, (spf, ch)).astype(np.float32) for i in range(s.video.fps)]
    reps = 200
    t0 = time.perf_counter()
    for _ in range(reps):
        pcm16(second, ch)
    per_s = (time.perf_counter() - t0) / reps
    print(f"/preview.wav per listener: {per_s * 1e6:.0f} us of CPU per second of sound (float to 16-bit PCM, "
          f"{s.video.fps} frames): {per_s:.5f} cores")


if __name__ == "__main__":
    main()
