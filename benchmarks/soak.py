"""Soak: run the daemon (still renderer) into a local nginx-rtmp for a while and print how it holds up.

    python benchmarks/soak.py --minutes 20 [--push-every 20] [--restart-endpoint-every 300]

Prints one row per interval (RSS, A/V skew, underruns, reconnects, CPU) and a summary. Needs Debian's nginx and
libnginx-mod-rtmp (the test suite's server is reused). Nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "ingest"))

from flashtalk_live.client import Client, ClientError  # noqa: E402
from ingest_audiogen import encode  # noqa: E402
from rtmp_harness import NginxRtmp, free_port, read_media  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds per table row")
    ap.add_argument("--push-every", type=float, default=20.0, help="push a 5 s clip this often (0: never)")
    ap.add_argument("--restart-endpoint-every", type=float, default=300.0, help="kill+restart nginx (0: never)")
    ap.add_argument("--size", default="448x768")
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))

    work = Path(tempfile.mkdtemp(prefix="flashtalk-soak-"))
    srv = NginxRtmp(prefix=work / "nginx", rtmp_port=free_port(), http_port=free_port())
    srv.start()
    state = work / "state"
    cfg = work / "soak.toml"
    cfg.write_text(f"""state_dir = "{state}"
[ingest]
control = ["ipc://{{state_dir}}/control.sock"]
events = ["ipc://{{state_dir}}/events.sock"]
[programme]
playlist = "{ROOT / 'playlists' / 'example.m3u'}"
pause_seconds = 1.0
[video]
width = {w}
height = {h}
[encoder]
preset = "{args.preset}"
[metrics]
port = 0
[logging]
format = "json"
[output_policy]
backoff_max_s = 5.0
[[outputs]]
name = "nginx"
url = "{srv.url('soak')}"
""")
    log = open(work / "daemon.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "flashtalk_live", "run", "-c", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    client = Client(f"ipc://{state}/control.sock", timeout_s=5.0)
    for _ in range(300):
        try:
            client.ping()
            break
        except ClientError:
            time.sleep(0.1)
    clip = encode("wav_s16", seconds=5.0, freq=523.0)

    print(f"soak: {args.minutes:g} min, {w}x{h} {args.preset}, still renderer, one nginx endpoint; work dir {work}")
    print(f"{'t (min)':>7} {'RSS MiB':>8} {'skew ms':>8} {'underrun fr':>11} {'episodes':>8} {'reconnects':>10} "
          f"{'dropped':>7} {'CPU %':>6} {'queue':>5} {'frames':>8} {'lag ms':>7}")  # lag: wall clock minus media clock since row 1
    t0 = time.monotonic()
    cpu0 = cpu_seconds(proc.pid)
    last_t, last_cpu = t0, cpu0
    next_row, next_push = t0 + args.interval, t0 + args.push_every
    next_restart = t0 + args.restart_endpoint_every if args.restart_endpoint_every else float("inf")
    rows = []
    pushed = restarts = 0
    end = t0 + args.minutes * 60
    try:
        while time.monotonic() < end:
            time.sleep(0.5)
            now = time.monotonic()
            if args.push_every and now >= next_push:
                client.enqueue(clip)
                pushed += 1
                next_push += args.push_every
            if now >= next_restart:
                srv.restart()
                restarts += 1
                next_restart += args.restart_endpoint_every
            if now >= next_row:
                st = client.status()
                if not rows:
                    t_first, frames_first = now, st["broadcast"]["frames_out"]
                cpu = cpu_seconds(proc.pid)
                b, o = st["broadcast"], st["outputs"][0]
                row = dict(t=(now - t0) / 60, rss=st["rss_bytes"] / 2**20, skew=b["av_skew_s"] * 1000,
                           uf=b["underrun_frames"], ue=b["underrun_episodes"], rc=o["reconnects"],
                           dr=o["dropped_packets"], cpu=100 * (cpu - last_cpu) / (now - last_t),
                           q=st["queue"]["clips"], frames=b["frames_out"],
                           lag=1000 * ((now - t_first) - (b["frames_out"] - frames_first) / 25))
                rows.append(row)
                print(f"{row['t']:7.1f} {row['rss']:8.1f} {row['skew']:8.1f} {row['uf']:11d} {row['ue']:8d} "
                      f"{row['rc']:10d} {row['dr']:7d} {row['cpu']:6.1f} {row['q']:5d} {row['frames']:8d} {row['lag']:7.0f}",
                      flush=True)
                last_t, last_cpu = now, cpu
                next_row += args.interval
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        srv.kill()
    total = time.monotonic() - t0
    cpu_all = (last_cpu - cpu0) / max(1e-9, last_t - t0)
    recs = srv.recordings("soak")
    info = read_media(recs[-1]) if recs else None
    print()
    print("| measure | value |")
    print("|---|---|")
    if rows:
        base = rows[min(1, len(rows) - 1)]["rss"]
        print(f"| duration | {total / 60:.1f} min |")
        print(f"| RSS after 2 min -> end | {base:.1f} -> {rows[-1]['rss']:.1f} MiB ({rows[-1]['rss'] - base:+.1f}) |")
        print(f"| A/V skew (encoder), worst | {max(abs(r['skew']) for r in rows):.1f} ms |")
        print(f"| underruns | {rows[-1]['uf']} frames in {rows[-1]['ue']} episodes |")
        print(f"| endpoint restarts / daemon reconnects | {restarts} / {rows[-1]['rc']} |")
        print(f"| packets dropped while down | {rows[-1]['dr']} |")
        print(f"| daemon CPU, mean | {100 * cpu_all:.1f} % of one core |")
        print(f"| clips pushed | {pushed} |")
    if info is not None:
        print(f"| last recording: A/V end skew | {1000 * (info.audio_end - info.video_end):.1f} ms over {info.video_end:.0f} s |")
    print(f"| recordings (publish sessions) | {len(recs)} |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
