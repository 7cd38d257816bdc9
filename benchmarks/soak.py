"""Soak: run the daemon (still renderer) into two local nginx-rtmp servers, fill and free its disk, print how it holds up.

    python benchmarks/soak.py --minutes 30 --fill-disk-at 8,20 --free-disk-after 60 --restart-endpoint-every 120

The state dir is a 64 MiB tmpfs this script mounts (run as root) and unmounts; at each --fill-disk-at minute a
ballast file takes its last byte, and goes again --free-disk-after seconds later. One endpoint is healthy (never
restarted), the other is killed and restarted every --restart-endpoint-every seconds. A 5 s clip is pushed every
--push-every seconds throughout; `disk_full` rejections while the disk is full are expected and only counted.
Prints one row per interval (RSS, fds, children, underruns, storage, clips) and a summary: first vs last
RSS/fds/children, the healthy endpoint's largest video gap read back from its recording(s), the flapping one's
reconnects, and whether every acknowledged clip finished. Needs Debian's nginx and libnginx-mod-rtmp (the test
suite's server is reused). Nothing here is a pass/fail threshold.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from flashtalk_live.client import Client, ClientError, EventStream, Rejected  # noqa: E402

from support.audiogen import encode  # noqa: E402
from support.box_faults import fill  # noqa: E402
from support.rtmp_harness import NginxRtmp, free_port, max_gap, read_media  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
STORAGE = {"min_free_bytes": 8 << 20, "min_free_percent": 0, "spool_reserve_bytes": 4 << 20, "check_interval_s": 1}


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def children(pid: int) -> int:
    """Live processes whose parent is `pid` (PyAV/ffmpeg helpers, renderer workers, ...)."""
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    n += int(f.read().rsplit(")", 1)[1].split()[1]) == pid
            except OSError:
                pass
    return n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds per table row")
    ap.add_argument("--push-every", type=float, default=20.0, help="push a 5 s clip this often (0: never)")
    ap.add_argument("--restart-endpoint-every", type=float, default=120.0,
                    help="kill+restart the flapping nginx (0: never)")
    ap.add_argument("--fill-disk-at", default="", help="minutes at which to fill the state tmpfs, comma-separated")
    ap.add_argument("--free-disk-after", type=float, default=60.0, help="seconds until the ballast goes again")
    ap.add_argument("--tmpfs-size", default="64m")
    ap.add_argument("--size", default="448x768")
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    fills = sorted(float(x) * 60 for x in args.fill_disk_at.split(",") if x.strip())

    work = Path(tempfile.mkdtemp(prefix="flashtalk-soak-"))
    state = work / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.tmpfs_size}", "tmpfs", str(state)], check=True)
    healthy = NginxRtmp(prefix=work / "nginx-healthy", rtmp_port=free_port(), http_port=free_port())
    flappy = NginxRtmp(prefix=work / "nginx-flapping", rtmp_port=free_port(), http_port=free_port())
    healthy.start()
    flappy.start()
    cfg = work / "soak.toml"  # outside the tmpfs, as under systemd
    storage = "\n".join(f"{k} = {v}" for k, v in STORAGE.items())
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
[storage]
{storage}
[output_policy]
backoff_max_s = 5.0
[[outputs]]
name = "healthy"
url = "{healthy.url('soak')}"
[[outputs]]
name = "flapping"
url = "{flappy.url('soak')}"
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
    events = EventStream(f"ipc://{state}/events.sock")
    events.sync(client)
    clip = encode("wav_s16", seconds=5.0, freq=523.0)

    print(f"soak: {args.minutes:g} min, {w}x{h} {args.preset}, still renderer, state dir on a {args.tmpfs_size} "
          f"tmpfs (filled at {args.fill_disk_at or 'never'} min for {args.free_disk_after:g} s), endpoints: healthy + "
          f"flapping every {args.restart_endpoint_every:g} s; work dir {work}")
    head = (f"{'t min':>5} {'RSS MiB':>7} {'fds':>4} {'kids':>4} {'uf clip':>7} {'uf idle':>7} {'degr':>4} "
            f"{'disk':>5} {'full rej':>8} {'pushed':>6} {'acked':>5} {'fin':>4} {'queue':>5} {'flap rc':>7} "
            f"{'h state':>7} {'CPU %':>5} {'lag ms':>6}")
    print(head)  # disk: free MiB on the tmpfs; lag: wall clock minus media clock since row 1
    t0 = time.monotonic()
    cpu0 = cpu_seconds(proc.pid)
    last_t, last_cpu = t0, cpu0
    next_row, next_push = t0 + args.interval, t0
    next_restart = t0 + args.restart_endpoint_every if args.restart_endpoint_every else float("inf")
    fill_at = [t0 + s for s in fills]
    free_at = float("inf")
    ballast: Path | None = None
    rows: list[dict] = []
    acked: set[str] = set()
    finished: set[str] = set()
    pushed = rejected_full = other_errors = restarts = disk_low = disk_ok = 0
    first = dict(rss=0.0, fds=len(os.listdir(f"/proc/{proc.pid}/fd")), kids=children(proc.pid))
    end = t0 + args.minutes * 60

    def drain_events() -> None:
        nonlocal disk_low, disk_ok
        while (ev := events.get(0)) is not None:
            kind = ev.get("type")
            if kind == "finished" and ev.get("segment_id"):
                finished.add(ev["segment_id"])
            disk_low += kind == "disk_low"
            disk_ok += kind == "disk_ok"

    try:
        while time.monotonic() < end:
            time.sleep(0.5)
            drain_events()
            now = time.monotonic()
            if fill_at and now >= fill_at[0]:
                fill_at.pop(0)
                ballast = fill(state)
                free_at = now + args.free_disk_after
            if now >= free_at:
                ballast.unlink()
                ballast, free_at = None, float("inf")
            if args.push_every and now >= next_push:
                pushed += 1
                next_push += args.push_every
                try:
                    acked.add(client.enqueue(clip)["segment_id"])
                except Rejected as e:
                    if e.code != "disk_full":
                        raise
                    rejected_full += 1
                except ClientError as e:
                    other_errors += 1
                    print(f"      push failed: {e}", flush=True)
            if now >= next_restart:
                flappy.restart()
                restarts += 1
                next_restart += args.restart_endpoint_every
            if now >= next_row:
                st = client.status()
                b = st["broadcast"]
                outs = {o["name"]: o for o in st["outputs"]}
                if not rows:
                    t_first, frames_first = now, b["frames_out"]
                    first["rss"] = st["rss_bytes"] / 2**20
                cpu = cpu_seconds(proc.pid)
                vfs = os.statvfs(state)
                row = dict(t=(now - t0) / 60, rss=st["rss_bytes"] / 2**20, fds=len(os.listdir(f"/proc/{proc.pid}/fd")),
                           kids=children(proc.pid), ufc=b.get("underrun_frames_clip", b["underrun_frames"]),
                           ufi=b.get("underrun_frames_idle", 0), degr=int(bool(st["storage"]["degraded"])),
                           disk=vfs.f_bavail * vfs.f_frsize / 2**20, rej=rejected_full, pushed=pushed,
                           acked=len(acked), fin=len(finished & acked), q=st["queue"]["clips"],
                           rc=outs["flapping"]["reconnects"], hs=outs["healthy"]["state"],
                           cpu=100 * (cpu - last_cpu) / (now - last_t),
                           lag=1000 * ((now - t_first) - (b["frames_out"] - frames_first) / 25))
                rows.append(row)
                print(f"{row['t']:5.1f} {row['rss']:7.1f} {row['fds']:4d} {row['kids']:4d} {row['ufc']:7d} "
                      f"{row['ufi']:7d} {row['degr']:4d} {row['disk']:5.1f} {row['rej']:8d} {row['pushed']:6d} "
                      f"{row['acked']:5d} {row['fin']:4d} {row['q']:5d} {row['rc']:7d} {row['hs']:>7} "
                      f"{row['cpu']:5.1f} {row['lag']:6.0f}", flush=True)
                last_t, last_cpu = now, cpu
                next_row += args.interval
        # let the last acknowledged clips play out before judging "every acknowledged clip finished"
        if ballast is not None:
            ballast.unlink()
            ballast = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not acked <= finished:
            time.sleep(0.5)
            drain_events()
        queue_end = client.status()["queue"]["clips"]
        final_rc = next(o for o in client.status()["outputs"] if o["name"] == "flapping")["reconnects"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        events.close()
        client.close()
        healthy.kill()
        flappy.kill()
        subprocess.run(["umount", "-l", str(state)], check=False)
    total = time.monotonic() - t0
    cpu_all = (last_cpu - cpu0) / max(1e-9, last_t - t0)
    recs = healthy.recordings("soak")
    gaps = [(max_gap(info.video_pts), info.video_end, p.name) for p in recs for info in [read_media(p)]]
    crashed = sum(b'broadcast_loop_crashed' in line for line in (work / "daemon.log").read_bytes().splitlines())
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| duration | {total / 60:.1f} min (incl. up to 60 s drain at the end) |")
    if rows:
        r0, r1 = rows[0], rows[-1]
        print(f"| RSS first row -> last row | {r0['rss']:.1f} -> {r1['rss']:.1f} MiB ({r1['rss'] - r0['rss']:+.1f}); "
              f"min {min(r['rss'] for r in rows):.1f}, max {max(r['rss'] for r in rows):.1f} |")
        print(f"| open fds at start / first row -> last row | {first['fds']} / {r0['fds']} -> {r1['fds']}; "
              f"max {max(r['fds'] for r in rows)} |")
        print(f"| children at start / first row -> last row | {first['kids']} / {r0['kids']} -> {r1['kids']}; "
              f"max {max(r['kids'] for r in rows)} |")
        print(f"| underrun frames (clip / idle) | {r1['ufc']} / {r1['ufi']} |")
        print(f"| rows with storage degraded | {sum(r['degr'] for r in rows)} of {len(rows)} |")
        print(f"| daemon CPU, mean | {100 * cpu_all:.1f} % of one core |")
        print(f"| media lag at the last row | {r1['lag']:.0f} ms |")
    print(f"| disk fills / disk_low events / disk_ok events | {len(fills)} / {disk_low} / {disk_ok} |")
    print(f"| clips pushed / acknowledged / disk_full rejections / other errors | {pushed} / {len(acked)} / "
          f"{rejected_full} / {other_errors} |")
    lost = acked - finished
    print(f"| acknowledged clips finished | {len(acked & finished)} of {len(acked)}"
          f"{'' if not lost else ' (missing: ' + ', '.join(sorted(lost)[:5]) + ')'}; queue at the end {queue_end} |")
    print(f"| flapping endpoint: restarts / daemon reconnects | {restarts} / {final_rc} |")
    if gaps:
        worst = max(gaps)
        print(f"| healthy endpoint: recordings / largest video gap | {len(recs)} / {1000 * worst[0]:.1f} ms "
              f"(in {worst[2]}, {worst[1]:.0f} s of video) |")
    else:
        print("| healthy endpoint: recordings | none |")
    print(f"| daemon exit code / broadcast_loop_crashed logs | {rc} / {crashed} |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
