"""Log volume a peer can cause (issue 24 item 7): the real daemon process, its JSON log measured in bytes.

Three loads, each for `--seconds`: clips accepted with a ~60 KB `meta` (the 64 KiB header's worth), requests
rejected at the rate limit's pace (a bad field: `bad_request`), and refused CURVE handshakes (sockets with unknown
keys, disconnected and connected again in turn, paced at `--knocks` per second). For each: what was sent, what the
daemon took or refused, and the log bytes it wrote per item and per second. The daemon runs the still renderer on
a 256x256 room, one file output.

    python benchmarks/log_volume.py                       # 10 s per load, 1000 knocks/s
    python benchmarks/log_volume.py --seconds 30 --knocks 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

import zmq  # noqa: E402

from flashtalk_live.client import Rejected  # noqa: E402

from support.audiogen import encode  # noqa: E402
from support.curve import unknown_peers  # noqa: E402
from support.daemon_harness import DaemonProcess  # noqa: E402


def grew(d: DaemonProcess, since: int) -> int:
    return d.log_path.stat().st_size - since


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--knocks", type=float, default=1000.0, help="refused handshakes attempted per second")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ftl-logbench-", dir="/tmp"))
    d = DaemonProcess(tmp / "state", [{"name": "rec", "url": str(tmp / "rec.flv")}],
                      ['ingest.tcp_auth="curve"', "ingest.rate_per_s=1000", "ingest.rate_burst=1000"]).start()
    rows = []
    try:
        with d.client(timeout_s=30) as c:
            meta = {f"key{i}": "v" * 580 for i in range(100)}
            clip = encode("wav_s16", seconds=0.3)
            size0, n, t0 = d.log_path.stat().st_size, 0, time.monotonic()
            while time.monotonic() - t0 < a.seconds:
                c.enqueue(clip, meta=meta)
                n += 1
                if n % 50 == 0:
                    c.clear()
            el = time.monotonic() - t0
            rows.append(("accepted, 60 KB meta", n, n, grew(d, size0), el))

            size0, n, t0 = d.log_path.stat().st_size, 0, time.monotonic()
            while time.monotonic() - t0 < a.seconds:
                try:
                    c.call("status", bogus=1)
                except Rejected:
                    n += 1
            el = time.monotonic() - t0
            rows.append(("rejected requests", n, n, grew(d, size0), el))

            ctx = zmq.Context()
            socks = unknown_peers(ctx, d.state_dir, 100)
            size0, knocks, t0 = d.log_path.stat().st_size, 0, time.monotonic()
            while time.monotonic() - t0 < a.seconds:
                s = socks[knocks % len(socks)]
                if knocks >= len(socks):
                    s.disconnect(d.tcp)
                s.connect(d.tcp)
                knocks += 1
                ahead = t0 + knocks / a.knocks - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            time.sleep(11.0)  # one log interval: the count line of the last window comes out
            el = time.monotonic() - t0
            text = d.log_path.read_bytes()[size0:]
            lines = [json.loads(ln) for ln in text.splitlines() if ln.startswith(b"{")]
            refused = sum(x.get("count", 0) for x in lines if x.get("event") == "curve_client_refused_suppressed") \
                + sum(1 for x in lines if x.get("event") == "curve_client_refused")
            rows.append(("refused handshakes", knocks, refused, len(text), el))
            for s in socks:
                s.close(0)
            ctx.term()
        d.stop()
    finally:
        d.kill()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"# log volume, {platform.node()} ({platform.processor() or platform.machine()}), commit {commit}, "
          f"{a.seconds:g} s per load")
    print(f"{'load':<24}{'sent':>8}{'taken/refused':>15}{'log bytes':>11}{'B/item':>9}{'B/s':>9}")
    for name, sent, counted, nbytes, el in rows:
        print(f"{name:<24}{sent:>8}{counted:>15}{nbytes:>11}{nbytes / max(counted, 1):>9.1f}{nbytes / el:>9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
