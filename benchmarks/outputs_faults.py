"""Compare the two output designs under the same faults: FFmpeg's fifo muxer in-process vs a child per connection.

Each design streams 8 s (256x256, 25 fps, ultrafast) to a healthy nginx-rtmp, a mute TCP peer and a
refused port, then removes the mute output while streaming. A heartbeat thread measures how long the
whole process was frozen (largest gap between 5 ms ticks). Each design runs in its own subprocess
under a hard timeout, because the failure being measured is "the process freezes".

    python benchmarks/outputs_faults.py            # both designs, prints a table
    python benchmarks/outputs_faults.py --design child|fifo   # one run, prints JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support


class Heartbeat(threading.Thread):
    """Ticks every 5 ms; the largest gap between ticks is how long no Python thread could run."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.max_gap = 0.0
        self.stop = threading.Event()
        self.reset()

    def reset(self) -> None:
        self.max_gap = 0.0
        self.last = time.perf_counter()

    def run(self) -> None:
        while not self.stop.is_set():
            time.sleep(0.005)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - self.last)
            self.last = now


class FifoOutput:
    """The doc's in-process alternative: flv inside FFmpeg's fifo pseudo-muxer (its own pthread)."""

    def __init__(self, url: str, enc, rw_timeout_s: float = 1.0) -> None:
        import av

        from flashtalk_live.outputs.base import Rebaser

        self.c = av.open(url, "w", format="fifo", options={
            "fifo_format": "flv", "format_opts": f"rw_timeout={int(rw_timeout_s * 1e6)}:flvflags=no_duration_filesize",
            "queue_size": "250", "drop_pkts_on_overflow": "1", "attempt_recovery": "1", "recover_any_error": "1",
            "max_recovery_attempts": "0", "recovery_wait_time": "1", "restart_with_keyframe": "1"})
        self.rb = Rebaser(self.c, enc.video_stream, enc.audio_stream)
        self.c.start_encoding()

    def send(self, packets) -> None:
        for p in packets:
            self.rb.mux(p)

    def close(self) -> None:
        self.c.close()


class FifoManager:
    def __init__(self, enc) -> None:
        self.enc = enc
        self.outs: dict[str, FifoOutput] = {}

    def add(self, name: str, url: str) -> None:
        self.outs[name] = FifoOutput(url, self.enc)
        self.enc.request_keyframe()

    def remove(self, name: str) -> None:
        self.outs.pop(name).close()

    def send(self, packets) -> None:
        for o in list(self.outs.values()):
            o.send(packets)

    def status(self) -> list[dict]:
        return [{"name": n, "state": "unknown"} for n in self.outs]  # fifo exposes no connection state

    def close(self, timeout: float = 5.0) -> None:
        for n in list(self.outs):
            self.remove(n)


def run_one(design: str) -> dict:
    from support.outputs_driver import FPS, frame_and_audio, make_encoder
    from support.rtmp_harness import NginxRtmp, free_port, max_gap, read_media

    from flashtalk_live.outputs.manager import OutputManager
    from flashtalk_live.settings import OutputPolicy, OutputSettings

    tmp = Path(tempfile.mkdtemp(prefix="outbench-"))
    srv = NginxRtmp(prefix=tmp / "nginx", rtmp_port=free_port(), http_port=free_port())
    srv.start()
    mute = socket.socket()
    mute.bind(("127.0.0.1", 0))
    mute.listen(16)  # accepted by the kernel, never read or answered
    refused = free_port()
    urls = {"good": srv.url("good"), "mute": f"rtmp://127.0.0.1:{mute.getsockname()[1]}/live/x",
            "refused": f"rtmp://127.0.0.1:{refused}/live/x"}
    enc = make_encoder()
    if design == "child":
        m = OutputManager.for_encoder(OutputPolicy(stall_timeout_s=3.0, backoff_max_s=2.0), None, enc)
        for n, u in urls.items():
            m.add(OutputSettings(name=n, url=u))
    else:
        m = FifoManager(enc)
        for n, u in urls.items():
            m.add(n, u)
    hb = Heartbeat()
    hb.start()
    cpu0 = time.process_time()
    send_max = 0.0
    freeze_stream = freeze_remove = remove_s = status_max = 0.0
    t0 = time.monotonic()
    n = 8 * FPS
    for i in range(n):
        pk = enc.encode(*frame_and_audio(i))
        ts = time.perf_counter()
        m.send(pk)
        send_max = max(send_max, time.perf_counter() - ts)
        ts = time.perf_counter()
        m.status()
        status_max = max(status_max, time.perf_counter() - ts)
        if i == 5 * FPS:  # remove the mute output mid-stream (an operator's config change)
            freeze_stream = hb.max_gap
            hb.reset()
            ts = time.perf_counter()
            m.remove("mute")
            remove_s = time.perf_counter() - ts
            freeze_remove = hb.max_gap
            hb.reset()
        delay = t0 + (i + 1) / FPS - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    freeze_stream = max(freeze_stream, hb.max_gap)
    ts = time.perf_counter()
    m.close(5.0)
    close_s = time.perf_counter() - ts
    wall = time.monotonic() - t0
    cpu_self = time.process_time() - cpu0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    recs = srv.recordings("good")
    info = read_media(recs[0]) if recs else None
    srv.kill()
    return {
        "design": design, "wall_s": round(wall, 2), "send_max_ms": round(send_max * 1000, 2),
        "status_max_ms": round(status_max * 1000, 2),
        "freeze_while_streaming_ms": round(freeze_stream * 1000, 1), "remove_mute_s": round(remove_s, 3),
        "freeze_during_remove_ms": round(freeze_remove * 1000, 1), "close_s": round(close_s, 3),
        "good_recordings": len(recs), "good_frames": info.video_packets if info else 0,
        "good_max_gap_ms": round(max_gap(info.video_pts) * 1000, 1) if info else None,
        "cpu_parent_s": round(cpu_self, 2),
        "cpu_children_s": round(children.ru_utime + children.ru_stime, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--design", choices=["child", "fifo"])
    ap.add_argument("--timeout", type=float, default=90.0)
    args = ap.parse_args()
    if args.design:
        print(json.dumps(run_one(args.design)))
        return
    rows = []
    for design in ("child", "fifo"):
        try:
            out = subprocess.run([sys.executable, __file__, "--design", design], capture_output=True, text=True,
                                 timeout=args.timeout, env=dict(os.environ, FLASHTALK_LOG_LEVEL="warning"))
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            rows.append(json.loads(line[-1]) if line else {"design": design, "error": out.stderr[-500:]})
        except subprocess.TimeoutExpired:
            rows.append({"design": design, "error": f"froze: killed after {args.timeout:g} s"})
    keys = [k for k in rows[0] if k != "design"] if "error" not in rows[0] else list(rows[-1])
    print(f"{'':28}" + "".join(f"{r['design']:>14}" for r in rows))
    for k in sorted({k for r in rows for k in r} - {"design"}, key=lambda k: keys.index(k) if k in keys else 99):
        print(f"{k:28}" + "".join(f"{str(r.get(k, '-')):>14}" for r in rows))


if __name__ == "__main__":
    main()
