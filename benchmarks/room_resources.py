"""CPU and memory a room needs on the host (issue 20: the pod's requests), measured on this machine.

1. The real daemon on the embedded default (`flashtalk-live run` with no config: the still renderer, the demo
   programme, libx264 `veryfast` at 448x768/25, AAC, one recording file), in a temporary state dir: its CPU (utime +
   stime from /proc over `--seconds` after `--warmup`), its peak RSS, its threads, and how long a SIGTERM stop takes.
2. The x264 encoder alone on moving frames (a still portrait compresses to almost nothing; a talking head does not):
   the same encoder settings fed frames that change everywhere, CPU seconds per second of air.

    python benchmarks/room_resources.py                     # 20 s warm-up, 60 s measured
    python benchmarks/room_resources.py --seconds 30 --encoder-seconds 20
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from flashtalk_live.media.encoder import Encoder  # noqa: E402
from flashtalk_live.config import load_settings  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def rss_kib(pid: int) -> tuple[int, int]:
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0])
    return vals.get("VmRSS", 0), vals.get("VmHWM", 0)


def daemon(warmup: float, seconds: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_")}
        env.update(XDG_STATE_HOME=d, PYTHONPATH=str(ROOT))
        log = open(Path(d) / "daemon.log", "wb")
        p = subprocess.Popen([sys.executable, "-m", "flashtalk_live", "run", "--set", "metrics.port=0"],
                             env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            time.sleep(warmup)
            if p.poll() is not None:
                raise SystemExit(f"daemon exited with {p.returncode}: see {log.name}")
            c0, t0 = cpu_s(p.pid), time.monotonic()
            peak = 0
            while time.monotonic() - t0 < seconds:
                time.sleep(1.0)
                peak = max(peak, rss_kib(p.pid)[0])
            cores = (cpu_s(p.pid) - c0) / (time.monotonic() - t0)
            hwm = rss_kib(p.pid)[1]
            threads = len(os.listdir(f"/proc/{p.pid}/task"))
            ts = time.monotonic()
            p.send_signal(signal.SIGTERM)
            rc = p.wait(120)
            stop = time.monotonic() - ts
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    return {"cpu_cores": cores, "rss_peak_mib": peak / 1024, "rss_hwm_mib": hwm / 1024, "threads": threads,
            "stop_s": stop, "exit": rc}


def encoder(seconds: float) -> dict[str, float]:
    s = load_settings(None, environ={})
    v, e = s.video, s.encoder
    enc = Encoder(e, v.width, v.height, v.fps)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (v.height + 64, v.width + 64, 3), dtype=np.uint8)
    audio = np.zeros((s.samples_per_frame, e.audio_channels), np.float32)
    n = int(seconds * v.fps)
    t0 = time.process_time()
    w0 = time.monotonic()
    for k in range(n):  # the whole picture moves every frame: a worst case for the encoder
        dx, dy = (k * 3) % 64, (k * 2) % 64
        enc.encode(base[dy:dy + v.height, dx:dx + v.width], audio)
    enc.flush()
    cpu = time.process_time() - t0
    wall = time.monotonic() - w0
    enc.close()
    return {"cpu_s_per_air_s": cpu / seconds, "wall_s_per_air_s": wall / seconds, "preset": e.preset,
            "size": f"{v.width}x{v.height}@{v.fps}", "bitrate": e.video_bitrate}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--encoder-seconds", type=float, default=20.0)
    a = ap.parse_args()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start; commit {commit}")
    d = daemon(a.warmup, a.seconds)
    print("\n| daemon, embedded default (still, libx264 veryfast 448x768/25) | value |\n|---|---|")
    for k, val in d.items():
        print(f"| {k} | {val:.3f} |" if isinstance(val, float) else f"| {k} | {val} |")
    x = encoder(a.encoder_seconds)
    print("\n| libx264 alone, frames moving everywhere | value |\n|---|---|")
    for k, val in x.items():
        print(f"| {k} | {val:.3f} |" if isinstance(val, float) else f"| {k} | {val} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
