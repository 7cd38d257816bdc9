"""Daemon benchmark: the real daemon, FlashTalk renderer on random weights, N minutes of back-to-back clips.

    python benchmarks/daemon_gpu.py                                  # 10 min, realtime profile, full-size, cuda
    python benchmarks/daemon_gpu.py --profile auto --set model.quantize=\\"fp8\\" --set model.compile=true
    python benchmarks/daemon_gpu.py --tiny --minutes 0.3             # tiny random family on the CPU (smoke)

Starts `flashtalk-live run` as a subprocess with a generated config (renderer.kind = "flashtalk",
model.random_weights = "full" | "tiny", which only a benchmark may set: this script sets
FLASHTALK_LIVE_BENCHMARK=1) and a local .flv file as the output. Once the FlashTalk renderer has taken over
from the still one, speech-like WAV clips (4-12 s, generated here) are pushed through the control socket so
that one is always waiting; every `--idle-every`-th clip is pushed only after the room went idle, which
measures clip accepted -> first frame on air from an empty queue (the push ack and the `started` event, both
timed here). Reported at the end: underrun frames and episodes while FlashTalk was on air (the pacer's
counters in `status`), the renderer's chunk wall p50/p99 (its render() calls, from status), the peak GPU
memory (torch's allocator in the daemon, and nvidia-smi's per-process figure where it exists), the latency
figures, fallbacks to the still renderer and the recording's size. Nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from flashtalk_live.client import Client, ClientError, EventStream  # noqa: E402
from flashtalk_live.secrets import mask_text  # noqa: E402
from support.audio import mono_wav  # noqa: E402

TINY_PROFILE = 'base = "fast"\nheight = 64\nwidth = 32\n'  # fast's 29/1 frames and 2 steps, tiny picture


def speech_like_wav(seconds: float, seed: int, rate: int = 16000) -> bytes:
    """Mono 16-bit WAV: a voiced harmonic series with a wandering pitch, syllable envelopes and short pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 120 + 60 * rng.random() + 25 * np.sin(2 * np.pi * 0.7 * t + rng.random() * 6)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    syll = np.clip(np.sin(2 * np.pi * (3.5 + rng.random()) * t + rng.random() * 6), 0, None) ** 0.7
    gate = np.ones(n)
    for start in rng.uniform(0, max(0.1, seconds - 0.5), size=int(seconds // 3)):
        gate[int(start * rate):int((start + 0.3) * rate)] = 0.0  # pauses between phrases
    return mono_wav(0.25 * voice * syll * gate + 0.01 * rng.standard_normal(n), rate)


class EventRecorder(threading.Thread):
    """Reads the PUB feed in its own thread and stamps each event with this process's monotonic clock."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(name="events", daemon=True)
        self.stream = EventStream(endpoint)
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            ev = self.stream.get(0.2)
            if ev is not None:
                with self.lock:
                    self.events.append((time.monotonic(), ev))

    def find(self, type_: str, **match: Any) -> list[tuple[float, dict[str, Any]]]:
        with self.lock:
            return [(t, e) for t, e in self.events if e.get("type") == type_
                    and all(e.get(k) == v for k, v in match.items())]


class GpuSampler(threading.Thread):
    """nvidia-smi's memory figure for one process, sampled every few seconds (absent: no figure)."""

    def __init__(self, pid: int, every_s: float = 2.0) -> None:
        super().__init__(name="nvidia-smi", daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak_mib: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        while not self.stop.wait(self.every_s):
            try:
                out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            for line in out.splitlines():
                parts = [p.strip() for p in line.split(",")]
                if len(parts) == 2 and parts[0] == str(self.pid) and parts[1].isdigit():
                    self.peak_mib = max(self.peak_mib or 0.0, float(parts[1]))


def write_config(work: Path, args: argparse.Namespace) -> Path:
    state = work / "state"
    if args.tiny:
        (work / "tiny.toml").write_text(TINY_PROFILE)
        model = {"random_weights": '"tiny"', "profile": json.dumps(str(work / "tiny.toml")), "device": '"cpu"',
                 "dtype": '"float32"'}
        video = "width = 48\nheight = 80\n"
    else:
        model = {"random_weights": '"full"', "profile": json.dumps(args.profile), "device": json.dumps(args.device),
                 "dtype": '"bfloat16"'}
        video = ""
    cfg = work / "daemon.toml"
    cfg.write_text(f"""state_dir = "{state}"
[ingest]
control = ["ipc://{{state_dir}}/control.sock"]
events = ["ipc://{{state_dir}}/events.sock"]
[video]
{video}chunk_frames = 28
[renderer]
kind = "flashtalk"
[model]
{chr(10).join(f"{k} = {v}" for k, v in model.items())}
[encoder]
preset = "veryfast"
[metrics]
enabled = false
[logging]
format = "json"
[[outputs]]
name = "file"
url = "{work / 'out.flv'}"
""")
    return cfg


def wait_for_flashtalk(client: Client, proc: subprocess.Popen, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode} before the FlashTalk renderer was on air")
        try:
            st = client.status()
        except ClientError:
            time.sleep(0.5)
            continue
        r = st["renderer"]
        if r["active"] == "flashtalk":
            return st
        if r["failures"]:
            raise SystemExit(f"the FlashTalk renderer failed to load: {r['last_error']}")
        time.sleep(1.0)
    raise SystemExit(f"the FlashTalk renderer was not on air after {timeout_s:.0f} s (raise --load-timeout)")


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="clips pushed for this long once FlashTalk is on air")
    ap.add_argument("--profile", default="realtime", help="model.profile: a name, a .toml or auto")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="more daemon settings, e.g. --set model.compile=true --set model.quantize='\"fp8\"'")
    ap.add_argument("--duty", type=float, default=0.0,
                    help="speech share of air time (0.2: 20%%): a clip is pushed only once the speech pushed so far "
                         "is at most this share of the run; 0: back to back")
    ap.add_argument("--clip-seconds", type=float, nargs=2, default=(4.0, 12.0), metavar=("MIN", "MAX"),
                    help="clip lengths, drawn uniformly (--tiny: 2-4 s)")
    ap.add_argument("--idle-every", type=int, default=5, help="every Nth clip waits for an idle room (latency sample)")
    ap.add_argument("--load-timeout", type=float, default=1800.0, help="seconds allowed for load + warm-up")
    ap.add_argument("--tiny", action="store_true", help="tiny random family on the CPU (smoke)")
    ap.add_argument("--json", default=None, metavar="PATH")
    ap.add_argument("--progress", default=None, metavar="PATH",
                    help="every 30 s, the run's counters so far (a run cut short still tells)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (config, log, recording)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="flashtalk-daemon-bench-"))
    cfg = write_config(work, args)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_")}
    env["FLASHTALK_LIVE_BENCHMARK"] = "1"  # allows model.random_weights in this daemon only
    if args.tiny:
        env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "flashtalk_live", "run", "-c", str(cfg)]
    for o in args.overrides:
        cmd += ["--set", o]
    log = open(work / "daemon.log", "wb")
    t_start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=ROOT)
    state = work / "state"
    client = Client(f"ipc://{state}/control.sock", timeout_s=10.0)
    gpu = GpuSampler(proc.pid)
    gpu.start()
    rec: EventRecorder | None = None
    pushed: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    try:
        for _ in range(600):
            try:
                client.ping()
                break
            except ClientError:
                if proc.poll() is not None:
                    raise SystemExit(f"the daemon exited with {proc.returncode}; log: {work / 'daemon.log'}")
                time.sleep(0.2)
        rec = EventRecorder(f"ipc://{state}/events.sock")
        rec.start()
        # the recorder subscribes long before the first push: clips go out only once FlashTalk is on air
        st0 = wait_for_flashtalk(client, proc, args.load_timeout)
        load_s = time.monotonic() - t_start
        base = st0["broadcast"]
        print(f"FlashTalk on air after {load_s:.0f} s; pushing clips for {args.minutes:g} min", file=sys.stderr,
              flush=True)
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        rng = np.random.default_rng(1)
        i = 0
        next_progress = t0
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise SystemExit(f"the daemon exited with {proc.returncode} during the run")
            st = client.status()
            if args.progress and time.monotonic() >= next_progress:
                next_progress += 30.0
                bb = st["broadcast"]
                Path(args.progress).write_text(json.dumps({
                    "minutes": (time.monotonic() - t0) / 60, "clips_pushed": i,
                    "speech_s": sum(p["seconds"] for p in pushed),
                    "started": sum(1 for p in pushed if rec.find("started", segment_id=p["segment_id"])),
                    "underrun_frames_clip": bb.get("underrun_frames_clip", 0) - base.get("underrun_frames_clip", 0),
                    "underrun_frames_idle": bb.get("underrun_frames_idle", 0) - base.get("underrun_frames_idle", 0),
                    "render_ahead": st.get("render_ahead"), "chunk_s": (st["renderer"].get("drift") or {}).get("chunk_s"),
                }, indent=1))
            queue = st["queue"]["clips"]
            idle_sample = args.idle_every > 0 and i % args.idle_every == args.idle_every - 1
            if idle_sample:
                if queue or st["on_air"] is not None:
                    time.sleep(0.2)
                    continue
            elif queue >= 1:
                time.sleep(0.2)
                continue
            if args.duty > 0 and sum(p["seconds"] for p in pushed) > args.duty * (time.monotonic() - t0):
                time.sleep(0.2)  # the duty cycle: idle air between clips
                continue
            seconds = float(rng.uniform(*args.clip_seconds)) if not args.tiny else float(rng.uniform(2, 4))
            ack = client.enqueue(speech_like_wav(seconds, seed=i), format="wav")
            pushed.append({"segment_id": ack["segment_id"], "ack_t": time.monotonic(), "seconds": seconds,
                           "from_idle": queue == 0 and st["on_air"] is None})
            i += 1
        # let the last clips start so their latency counts, then read the counters
        time.sleep(min(15.0, 5.0 + (0 if args.tiny else 5.0)))
        st1 = client.status()
        b = st1["broadcast"]
        drift = st1["renderer"].get("drift") or {}
        ra = st1.get("render_ahead") or {}
        for p in pushed:
            hits = rec.find("started", segment_id=p["segment_id"])
            p["latency_s"] = hits[0][0] - p["ack_t"] if hits else None
        idle_lat = [p["latency_s"] for p in pushed if p["from_idle"] and p["latency_s"] is not None]
        queued_lat = [p["latency_s"] for p in pushed if not p["from_idle"] and p["latency_s"] is not None]
        chunk = drift.get("chunk_s") or {}
        changes = [e for _, e in rec.find("renderer_changed")]
        result = {
            "profile": drift.get("profile"), "auto": drift.get("auto"), "load_s": load_s,
            "minutes": (time.monotonic() - t0) / 60, "clips": len(pushed), "duty": args.duty,
            "speech_share": sum(p["seconds"] for p in pushed if p["latency_s"] is not None) / max(1.0, time.monotonic() - t0),
            "clips_over_floor": ra.get("clips_over_floor"), "idle_bank": ra.get("idle_bank"),
            "clip_seconds": sum(p["seconds"] for p in pushed),
            "underrun_frames": b["underrun_frames"] - base["underrun_frames"],
            "underrun_episodes": b["underrun_episodes"] - base["underrun_episodes"],
            "underrun_frames_clip": b.get("underrun_frames_clip", 0) - base.get("underrun_frames_clip", 0),
            "underrun_frames_idle": b.get("underrun_frames_idle", 0) - base.get("underrun_frames_idle", 0),
            "frames_out": b["frames_out"] - base["frames_out"],
            "chunk_count": chunk.get("count"), "chunk_p50_s": chunk.get("p50"), "chunk_p99_s": chunk.get("p99"),
            "chunk_max_s": chunk.get("max"), "render_rtf_last": b.get("render_rtf"),
            "gpu_load_peak_torch_gib": (None if drift.get("gpu_load_peak_bytes") is None
                                        else drift["gpu_load_peak_bytes"] / 2**30),
            "gpu_peak_torch_gib": (None if drift.get("gpu_steady_peak_bytes") is None
                                   else drift["gpu_steady_peak_bytes"] / 2**30),
            "gpu_peak_nvidia_smi_gib": None if gpu.peak_mib is None else gpu.peak_mib / 1024,
            "latency_from_idle_p50_s": pct(idle_lat, 50), "latency_from_idle_max_s": max(idle_lat, default=None),
            "latency_from_idle_n": len(idle_lat),
            "latency_queued_p50_s": pct(queued_lat, 50), "clips_not_started": sum(p["latency_s"] is None for p in pushed),
            "fallbacks_to_still": sum(1 for e in changes if e.get("renderer") == "still"),
            "renderer_failures": st1["renderer"]["failures"], "last_error": st1["renderer"]["last_error"],
            "renderer_at_end": st1["renderer"]["active"],
        }
    finally:
        if rec is not None:
            rec.stop.set()
        gpu.stop.set()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        client.close()
    out = work / "out.flv"
    result["recording_bytes"] = out.stat().st_size if out.exists() else 0
    result["daemon_exit"] = proc.returncode
    print_table(result, args)
    if args.json:
        shown = {**vars(args), "overrides": [mask_text(o) for o in args.overrides]}
        Path(args.json).write_text(json.dumps({"args": shown, "result": result, "clips": pushed}, indent=2))
        print(f"\nJSON: {args.json}")
    if args.keep:
        print(f"work folder: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _f(v: Any, fmt: str = "{:.3f}", unit: str = "") -> str:
    return "-" if v is None else fmt.format(v) + unit


def print_table(r: dict[str, Any], args: argparse.Namespace) -> None:
    family = "tiny (CPU)" if args.tiny else f"full-size random bf16 on {args.device}"
    print(f"\ndaemon benchmark: FlashTalk renderer, {family}, profile {r.get('profile')} (asked: "
          f"{'tiny' if args.tiny else args.profile}), settings {[mask_text(o) for o in args.overrides] or 'defaults'}")
    print("| measure | value |")
    print("|---|---|")
    rows = [
        ("load + warm-up", _f(r.get("load_s"), "{:.0f}", " s")),
        ("run", f"{_f(r.get('minutes'), '{:.1f}', ' min')}, {r.get('clips', 0)} clips "
                f"({_f(r.get('clip_seconds'), '{:.0f}', ' s')} of speech), {r.get('frames_out', '-')} frames out"),
        ("underrun frames (episodes)", f"{r.get('underrun_frames', '-')} ({r.get('underrun_episodes', '-')})"),
        ("speech share of air (asked)", f"{_f(r.get('speech_share'), '{:.0%}')} ({r.get('duty') or 'back to back'})"),
        ("clips started without their full head start", str(r.get("clips_over_floor", "-"))),
        ("underrun frames in clips / idle", f"{r.get('underrun_frames_clip', '-')} / {r.get('underrun_frames_idle', '-')}"),
        ("chunk wall p50 / p99 / max", f"{_f(r.get('chunk_p50_s'))} / {_f(r.get('chunk_p99_s'))} / "
                                       f"{_f(r.get('chunk_max_s'))} s over {r.get('chunk_count', '-')} chunks"),
        ("GPU memory load peak (torch allocated, up to the last warm-up)",
         _f(r.get("gpu_load_peak_torch_gib"), "{:.1f}", " GiB")),
        ("GPU memory steady peak (torch allocated since the warm-up / nvidia-smi)",
         f"{_f(r.get('gpu_peak_torch_gib'), '{:.1f}', ' GiB')} / {_f(r.get('gpu_peak_nvidia_smi_gib'), '{:.1f}', ' GiB')}"),
        ("clip accepted -> first frame on air, from idle: p50 / max (n)",
         f"{_f(r.get('latency_from_idle_p50_s'), '{:.2f}', ' s')} / {_f(r.get('latency_from_idle_max_s'), '{:.2f}', ' s')} "
         f"({r.get('latency_from_idle_n', 0)})"),
        ("accepted -> on air, queued behind a clip: p50", _f(r.get("latency_queued_p50_s"), "{:.2f}", " s")),
        ("clips not started by the end", str(r.get("clips_not_started", "-"))),
        ("fallbacks to the still renderer / failures", f"{r.get('fallbacks_to_still', '-')} / {r.get('renderer_failures', '-')}"),
        ("renderer at the end", str(r.get("renderer_at_end", "-"))),
        ("recording", f"{r.get('recording_bytes', 0) / 2**20:.1f} MiB; daemon exit {r.get('daemon_exit')}"),
    ]
    for k, v in rows:
        print(f"| {k} | {v} |")
    if r.get("last_error"):
        print(f"\nlast renderer error: {r['last_error']}")
    if r.get("auto"):
        print("\nauto profile measurements: " + json.dumps(r["auto"]))


if __name__ == "__main__":
    raise SystemExit(main())
