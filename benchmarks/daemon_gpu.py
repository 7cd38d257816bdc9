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
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from flashtalk_live.client import Client, ClientError, EventStream  # noqa: E402
from flashtalk_live.secrets import mask_text  # noqa: E402
from support.audio import mono_wav  # noqa: E402
from support.stamp import commit  # noqa: E402

TINY_PROFILE = 'base = "fast"\nheight = 64\nwidth = 32\n'  # fast's 29/1 frames and 2 steps, tiny picture


def speech_like(seconds: float, seed: int, rate: int = 16000) -> np.ndarray:
    """Mono float samples: a voiced harmonic series with a wandering pitch, syllable envelopes and short pauses."""
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
    return 0.25 * voice * syll * gate + 0.01 * rng.standard_normal(n)


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
    """nvidia-smi's memory figure for one process (CUDA context and the allocator's cache included), sampled every
    few seconds (absent: no figure): the peak over the whole run, and the peak since `on_air()` (steady state)."""

    def __init__(self, pid: int, every_s: float = 2.0) -> None:
        super().__init__(name="nvidia-smi", daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak_mib: float | None = None
        self.on_air_peak_mib: float | None = None
        self._on_air = False
        self.stop = threading.Event()

    def on_air(self) -> None:
        """FlashTalk is on air: samples from now on are the steady state."""
        self._on_air = True

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
                    if self._on_air:
                        self.on_air_peak_mib = max(self.on_air_peak_mib or 0.0, float(parts[1]))


# the room's look, engine choices and programme timing (its playlist is the embedded demo unless --set)
SHIPPED_SECTIONS = ("video", "renderer", "model", "encoder", "overlays", "programme")
NOT_SHIPPED = {"video": ("reference_image",), "model": ("weights_dir", "wav2vec_dir"),
               "programme": ("playlist",)}  # paths of a real box


def toml_line(key: str, value: Any) -> str:
    """One `key = value` TOML line for the scalar, list and inline-table values the shipped configs use."""
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        raise TypeError(f"{key}: {type(v).__name__} is not written by this benchmark")
    return f"{key} = {val(value)}"


def write_config(work: Path, args: argparse.Namespace) -> Path:
    """The daemon's config: the shipped config's engine and look (--config) or the benchmark's own, a file output."""
    state = work / "state"
    sections: dict[str, dict[str, Any]] = {"video": {"chunk_frames": 28}, "renderer": {"kind": "flashtalk"},
                                           "model": {}, "encoder": {"preset": "veryfast"}}
    if args.config:
        shipped = tomllib.loads(Path(args.config).read_text())
        for name in SHIPPED_SECTIONS:
            sec = {k: v for k, v in shipped.get(name, {}).items() if k not in NOT_SHIPPED.get(name, ())}
            sections[name] = {**sections.get(name, {}), **sec}
    if args.tiny:
        (work / "tiny.toml").write_text(TINY_PROFILE)
        sections["model"].update(random_weights="tiny", profile=str(work / "tiny.toml"), device="cpu",
                                  dtype="float32", compile=False, quantize="none")
        sections["model"].pop("auto_candidates", None)
        sections["video"].update(width=48, height=80)
    else:
        sections["model"].update(random_weights="full", device=args.device)
        if args.profile or not args.config:
            sections["model"]["profile"] = args.profile or "realtime"
        sections["model"].setdefault("dtype", "bfloat16")
    body = [f'state_dir = "{state}"', "[ingest]", 'control = ["ipc://{state_dir}/control.sock"]',
            'events = ["ipc://{state_dir}/events.sock"]', "[metrics]", "enabled = false",
            "[logging]", 'format = "json"']
    for name, sec in sections.items():
        body += [f"[{name}]"] + [toml_line(k, v) for k, v in sec.items()]
    body += ["[[outputs]]", 'name = "file"', f"url = {json.dumps(str(work / 'out.flv'))}"]
    cfg = work / "daemon.toml"
    cfg.write_text("\n".join(body) + "\n")
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
        if r["on_air"] == "flashtalk":  # viewers see it: on duty (`active`) comes up to a look-ahead sooner
            return st
        if r["failures"]:
            raise SystemExit(f"the FlashTalk renderer failed to load: {r['last_error']}")
        time.sleep(0.5)
    raise SystemExit(f"the FlashTalk renderer was not on air after {timeout_s:.0f} s (raise --load-timeout)")


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


class Daemon:
    """One `flashtalk-live run` process on the config; its start is timed from the spawn (the operator's
    `systemctl start`): the still renderer's first frame out, then the FlashTalk renderer on air."""

    def __init__(self, cfg: Path, work: Path, args: argparse.Namespace, tag: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHTALK_LIVE_")}
        env["FLASHTALK_LIVE_BENCHMARK"] = "1"  # allows model.random_weights in this daemon only
        if args.tiny:
            env.setdefault("OMP_NUM_THREADS", "1")
        cmd = [sys.executable, "-m", "flashtalk_live", "run", "-c", str(cfg)]
        for o in args.overrides:
            cmd += ["--set", o]
        self.log = open(work / f"daemon-{tag}.log", "wb")
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                     cwd=ROOT)
        self.state = work / "state"
        self.client = Client(f"ipc://{self.state}/control.sock", timeout_s=10.0)
        self.gpu = GpuSampler(self.proc.pid)
        self.gpu.start()
        self.first_frame_s: float | None = None

    def wait_first_frame(self) -> None:
        """Ping, then status until the broadcast has sent a frame (the still renderer on air)."""
        while time.monotonic() - self.t_start < 600:
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited with {self.proc.returncode}; log: {self.log.name}")
            try:
                if self.client.status()["broadcast"]["frames_out"] > 0:
                    self.first_frame_s = time.monotonic() - self.t_start
                    return
            except ClientError:
                pass
            time.sleep(0.05)

    def stop(self) -> tuple[int | None, float]:
        self.gpu.stop.set()
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.client.close()
        return self.proc.returncode, time.monotonic() - t


class StreamProducer(threading.Thread):
    """A streaming TTS stand-in: one clip sent as raw PCM in `piece_s` pieces, `pace` times real time (its own
    client)."""

    def __init__(self, endpoint: str, samples: np.ndarray, rate: int, piece_s: float = 0.2,
                 pace: float = 1.0) -> None:
        super().__init__(name="producer", daemon=True)
        self.endpoint, self.rate, self.piece_s, self.pace = endpoint, rate, piece_s, pace
        self.pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
        self.segment_id: str | None = None
        self.first_send: float | None = None
        self.first_ack: float | None = None
        self.error: str | None = None
        self.opened = threading.Event()

    def run(self) -> None:
        step = int(self.rate * self.piece_s) * 2
        try:
            with Client(self.endpoint, timeout_s=10.0) as c, \
                    c.stream(format="pcm_s16le", sample_rate=self.rate, channels=1) as s:
                self.segment_id = s.segment_id
                self.opened.set()
                t0 = time.monotonic()
                for k, off in enumerate(range(0, len(self.pcm), step)):
                    time.sleep(max(0.0, t0 + k * self.piece_s / self.pace - time.monotonic()))
                    if k == 0:
                        self.first_send = time.monotonic()
                    s.append(self.pcm[off:off + step])
                    if k == 0:
                        self.first_ack = time.monotonic()
        except Exception as e:  # noqa: BLE001 - reported in the result, the run goes on
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.opened.set()


# The push schedule: half the clips streamed at real-time pace, whole clips into an idle room, behind the clip on
# air, and play_now while one airs. "idle": nothing on air or queued; "behind": a clip on air, none queued.
SCHEDULE = (("enqueue", "idle"), ("stream", "idle"), ("enqueue", "behind"), ("stream", "behind"),
            ("play_now", "behind"), ("stream", "behind"))
KIND_NAMES = {("enqueue", "idle"): "enqueue_idle", ("stream", "idle"): "stream_first_byte",
              ("enqueue", "behind"): "enqueue_behind", ("stream", "behind"): "stream_behind",
              ("play_now", "behind"): "play_now"}


def run_clips(d: Daemon, rec: "EventRecorder", args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    """Push clips on SCHEDULE for --minutes; returns the pushes (kind, times, segment ids) and the run's length."""
    client, t0 = d.client, time.monotonic()
    end = t0 + args.minutes * 60
    rng = np.random.default_rng(1)
    rate = 16000
    pushed: list[dict[str, Any]] = []
    producer: StreamProducer | None = None
    i, slot, next_progress = 0, 0, t0  # i: clips pushed; slot: the SCHEDULE's position
    first_byte_samples = 0  # streams into an idle room so far: they cycle through the paces
    schedule = SCHEDULE if args.streams else tuple(x for x in SCHEDULE if x[0] == "enqueue")
    while time.monotonic() < end:
        if d.proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {d.proc.returncode} during the run")
        st = client.status()
        if args.progress and time.monotonic() >= next_progress:
            next_progress += 30.0
            bb = st["broadcast"]
            Path(args.progress).write_text(json.dumps({
                "minutes": (time.monotonic() - t0) / 60, "clips_pushed": i,
                "started": sum(1 for p in pushed if rec.find("started", segment_id=p.get("segment_id"))),
                "underrun_frames_clip": bb.get("underrun_frames_clip", 0) - base.get("underrun_frames_clip", 0),
                "underrun_frames_idle": bb.get("underrun_frames_idle", 0) - base.get("underrun_frames_idle", 0),
                "producer_starved_seconds": bb.get("producer_starved_seconds"),
                "chunk_s": (st["renderer"].get("drift") or {}).get("chunk_s"), "latency": st.get("latency"),
            }, indent=1))
        mode, where = schedule[slot % len(schedule)] if args.idle_every else ("enqueue", "behind")
        producing = producer is not None and producer.is_alive()
        for p in pushed:  # a clip taken for rendering is neither queued nor on air: our own pushes' events tell
            sid = p.get("segment_id")
            p["started"] = p.get("started") or bool(rec.find("started", segment_id=sid))
            p["finished"] = p.get("finished") or bool(rec.find("finished", segment_id=sid))
        waiting = sum(1 for p in pushed if not p["started"])
        airing = any(p["started"] and not p["finished"] for p in pushed)
        idle = st["on_air"] is None and not producing and waiting == 0 and not airing
        scheduled = not (where == "behind" and idle)
        if not scheduled:
            mode, where = "enqueue", "idle"  # nothing to be behind (the last clip ended first): an idle sample
        ready = idle if where == "idle" else \
            (airing and waiting == 0 and not (producing and mode != "enqueue"))
        if not ready or (args.duty > 0 and sum(p["seconds"] for p in pushed) > args.duty * (time.monotonic() - t0)):
            time.sleep(0.1)
            continue
        seconds = float(rng.uniform(*args.clip_seconds)) if not args.tiny else float(rng.uniform(2, 4))
        samples = speech_like(seconds, seed=i, rate=rate)
        p: dict[str, Any] = {"kind": KIND_NAMES[(mode, where)], "seconds": seconds, "streamed": mode == "stream",
                             # what the plan knew just before the push (its rates, the buffered air, the waits)
                             "render_ahead_before": st.get("render_ahead"), "air_before": st.get("on_air")}
        if mode == "stream":
            pace = args.stream_pace[0]
            if where == "idle":
                pace = args.stream_pace[first_byte_samples % len(args.stream_pace)]
                first_byte_samples += 1
            p.update(pace=pace, kind=p["kind"] + (f"_{pace:g}x" if len(args.stream_pace) > 1 else ""))
            producer = StreamProducer(client.endpoint, samples, rate, pace=pace)
            producer.start()
            producer.opened.wait(30)
            p.update(producer=producer, segment_id=producer.segment_id)
        else:
            p["send_t"] = time.monotonic()
            ack = client.call(mode, mono_wav(samples, rate), format="wav")
            p.update(ack_t=time.monotonic(), segment_id=ack["segment_id"], planned_in_s=ack.get("planned_in_s"))
        pushed.append(p)
        i += 1
        slot += 1 if scheduled else 0
        time.sleep(0.3)  # let the status see the push
    if producer is not None:
        producer.join(60)
    for p in pushed:
        prod = p.pop("producer", None)
        if prod is not None:
            p.update(segment_id=prod.segment_id, send_t=prod.first_send, ack_t=prod.first_ack, error=prod.error)
    return {"pushed": pushed, "t0": t0}


def paces(text: str) -> tuple[float, ...]:
    """--stream-pace: "1" or "1,4" -> (1.0,) or (1.0, 4.0); each above 0."""
    try:
        out = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of numbers: {text!r}") from None
    if not out or min(out) <= 0:
        raise argparse.ArgumentTypeError(f"paces must be above 0: {text!r}")
    return out


def paces_text(value: Any) -> str:
    """The result's stream_pace (a list, or one number from older results) as "1x" / "1x, 4x"."""
    return ", ".join(f"{float(x):g}x" for x in (value if isinstance(value, list) else [value or 1.0]))


def short_text(value: Any) -> str:
    """status.render_ahead.short_chunk_render_s ({"12": 0.36, ...}) as "12: 0.360 s, ..." ("none": no lead-in)."""
    if not value:
        return "none"
    return ", ".join(f"{n}: {float(v):.3f} s" for n, v in sorted(value.items(), key=lambda kv: int(kv[0])))


def latency_rows(pushed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per kind: push -> first frame of the clip on air (the `started` event's mono, the daemon's CLOCK_MONOTONIC,
    minus this process's monotonic time before the request), and its stages' medians."""
    rows: dict[str, dict[str, Any]] = {}
    for kind in dict.fromkeys(p["kind"] for p in pushed):  # in the order first pushed
        ps = [p for p in pushed if p["kind"] == kind and p.get("latency_s") is not None]
        if not ps:
            continue
        lat = [p["latency_s"] for p in ps]
        ack = [p["ack_t"] - p["send_t"] for p in ps if p.get("ack_t") is not None]
        plan = [p["planned_in_s"] for p in ps if p.get("planned_in_s") is not None]
        staged = [p for p in ps if p.get("cut_mono") is not None and p.get("ack_t") is not None]
        rows[kind] = {"n": len(lat), "p50_s": pct(lat, 50), "p99_s": pct(lat, 99), "max_s": max(lat),
                      "ack_p50_s": pct(ack, 50), "planned_in_p50_s": pct(plan, 50),
                      # ack -> first chunk cut (waits: the plan, buffered air ahead, admission, a stream's audio),
                      # cut -> rendered (the render), rendered -> first frame out (frame store, pacer)
                      "to_cut_p50_s": pct([p["cut_mono"] - p["ack_t"] for p in staged], 50),
                      "render_p50_s": pct([p["rendered_mono"] - p["cut_mono"] for p in staged], 50),
                      "to_air_p50_s": pct([p["mono"] - p["rendered_mono"] for p in staged], 50)}
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="clips pushed for this long once FlashTalk is on air")
    ap.add_argument("--config", default=None, metavar="TOML",
                    help="take the engine, look and programme timing from this shipped config (e.g. "
                         "configs/flashtalk-14b.toml): [video] [renderer] [model] [encoder] [overlays] [programme], "
                         "weights and paths (the playlist) aside")
    ap.add_argument("--profile", default=None, help="model.profile: a name, a .toml or auto (default: the config's, "
                                                    "else realtime)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="more daemon settings, e.g. --set model.compile=true --set model.quantize='\"fp8\"'")
    ap.add_argument("--duty", type=float, default=0.0,
                    help="speech share of air time (0.2: 20%%): a clip is pushed only once the speech pushed so far "
                         "is at most this share of the run; 0: back to back")
    ap.add_argument("--clip-seconds", type=float, nargs=2, default=(4.0, 12.0), metavar=("MIN", "MAX"),
                    help="clip lengths, drawn uniformly (--tiny: 2-4 s)")
    ap.add_argument("--idle-every", type=int, default=1,
                    help="0: every clip behind the one on air (no idle or play_now samples); else the SCHEDULE")
    ap.add_argument("--no-streams", dest="streams", action="store_false",
                    help="whole clips only (no streamed clips in the schedule)")
    ap.add_argument("--stream-pace", type=paces, default=(1.0,), metavar="PACE[,PACE...]",
                    help="streamed clips' audio arrives this many times faster than real time (1: a producer at "
                         "real-time pace, the slowest that does not starve; a streaming TTS usually runs faster). "
                         "Several: streams into an idle room (the first-byte samples) take them in turn, each its "
                         "own row; streams behind a clip take the first")
    ap.add_argument("--restart", action="store_true",
                    help="after the run, stop and start the daemon again on the same state dir: the warm start "
                         "(compile cache kept) next to the first, cold one")
    ap.add_argument("--load-timeout", type=float, default=1800.0, help="seconds allowed for load + warm-up")
    ap.add_argument("--tiny", action="store_true", help="tiny random family on the CPU (smoke)")
    ap.add_argument("--json", default=None, metavar="PATH")
    ap.add_argument("--progress", default=None, metavar="PATH",
                    help="every 30 s, the run's counters so far (a run cut short still tells)")
    ap.add_argument("--work", default=None, metavar="DIR", help="work folder (kept): config, logs, recording")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (config, log, recording)")
    args = ap.parse_args(argv)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="flashtalk-daemon-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = write_config(work, args)
    d = Daemon(cfg, work, args, "cold")
    rec: EventRecorder | None = None
    result: dict[str, Any] = {}
    pushed: list[dict[str, Any]] = []
    try:
        d.wait_first_frame()
        rec = EventRecorder(f"ipc://{d.state}/events.sock")
        rec.start()
        # the recorder subscribes long before the first push: clips go out only once FlashTalk is on air
        st0 = wait_for_flashtalk(d.client, d.proc, args.load_timeout)
        load_s = time.monotonic() - d.t_start
        d.gpu.on_air()
        base = st0["broadcast"]
        print(f"FlashTalk on air after {load_s:.0f} s; pushing clips for {args.minutes:g} min", file=sys.stderr,
              flush=True)
        run = run_clips(d, rec, args, base)
        pushed, t0 = run["pushed"], run["t0"]
        # let the last clips start so their latency counts, then read the counters
        time.sleep(5.0 if args.tiny else 10.0)
        st1 = d.client.status()
        b = st1["broadcast"]
        drift = st1["renderer"].get("drift") or {}
        ra = st1.get("render_ahead") or {}
        for p in pushed:
            hits = rec.find("started", segment_id=p.get("segment_id"))
            p["latency_s"] = (hits[0][1].get("mono", hits[0][0]) - p["send_t"]
                              if hits and p.get("send_t") is not None else None)
            if hits:  # the first chunk's cut and render, and the first frame, on the daemon's CLOCK_MONOTONIC
                p.update({k: hits[0][1].get(k) for k in ("cut_mono", "rendered_mono", "mono")})
            # every plan the clip had before it aired (what it waited for, when it was planned): the JSON's trace
            sid = p.get("segment_id")
            p["plans"] = sorted(({k: e.get(k) for k in ("type", "mono", "planned_in_s", "waits", "state")}
                                 for kind in ("scheduled", "rescheduled") for _, e in rec.find(kind, segment_id=sid)),
                                key=lambda e: e["mono"] or 0.0)
        chunk = drift.get("chunk_s") or {}
        changes = [e for _, e in rec.find("renderer_changed")]
        result = {
            "profile": drift.get("profile"), "auto": drift.get("auto"), "cold_start_s": load_s,
            "still_first_frame_s": d.first_frame_s,
            # the pacer during the start (the still renderer on air while the engine loads): a re-anchor is a freeze
            "start_reanchors": base.get("reanchors"), "start_lateness_max_s": base.get("lateness_max_s"),
            "reanchors_in_run": b.get("reanchors", 0) - base.get("reanchors", 0),
            "renders_abandoned": (st1.get("plan") or {}).get("renders_abandoned"),
            "minutes": (time.monotonic() - t0) / 60, "clips": len(pushed), "duty": args.duty,
            "streamed_clips": sum(p["streamed"] for p in pushed), "stream_pace": list(args.stream_pace),
            "speech_share": sum(p["seconds"] for p in pushed if p["latency_s"] is not None) / max(1.0, time.monotonic() - t0),
            "clips_over_floor": ra.get("clips_over_floor"), "idle_bank": ra.get("idle_bank"),
            "clip_seconds": sum(p["seconds"] for p in pushed),
            "underrun_frames": b["underrun_frames"] - base["underrun_frames"],
            "underrun_episodes": b["underrun_episodes"] - base["underrun_episodes"],
            "underrun_frames_clip": b.get("underrun_frames_clip", 0) - base.get("underrun_frames_clip", 0),
            "underrun_frames_idle": b.get("underrun_frames_idle", 0) - base.get("underrun_frames_idle", 0),
            "producer_starved_seconds": b.get("producer_starved_seconds", 0.0) - base.get("producer_starved_seconds", 0.0),
            "frames_out": b["frames_out"] - base["frames_out"],
            "chunk_count": chunk.get("count"), "chunk_p50_s": chunk.get("p50"), "chunk_p99_s": chunk.get("p99"),
            "chunk_max_s": chunk.get("max"), "render_rtf_last": b.get("render_rtf"),
            "render_rate": ra.get("render_rate"), "short_chunk_render_s": ra.get("short_chunk_render_s") or {},
            "lead_in_ramp": ra.get("lead_in_ramp") or [],
            "gpu_load_peak_torch_gib": (None if drift.get("gpu_load_peak_bytes") is None
                                        else drift["gpu_load_peak_bytes"] / 2**30),
            "gpu_peak_torch_gib": (None if drift.get("gpu_steady_peak_bytes") is None
                                   else drift["gpu_steady_peak_bytes"] / 2**30),
            "gpu_peak_nvidia_smi_gib": None if d.gpu.peak_mib is None else d.gpu.peak_mib / 1024,
            "gpu_on_air_peak_nvidia_smi_gib": (None if d.gpu.on_air_peak_mib is None
                                               else d.gpu.on_air_peak_mib / 1024),
            "latency": latency_rows(pushed), "daemon_latency": st1.get("latency"),
            "clips_not_started": sum(p["latency_s"] is None for p in pushed),
            "producer_errors": [p["error"] for p in pushed if p.get("error")],
            "fallbacks_to_still": sum(1 for e in changes if e.get("renderer") == "still"),
            "renderer_failures": st1["renderer"]["failures"], "last_error": st1["renderer"]["last_error"],
            "renderer_at_end": st1["renderer"]["on_air"],
        }
    finally:
        if rec is not None:
            rec.stop.set()
        result["daemon_exit"], result["stop_s"] = d.stop()
    out = work / "out.flv"
    result["recording_bytes"] = out.stat().st_size if out.exists() else 0
    if args.restart:
        w = Daemon(cfg, work, args, "warm")
        try:
            w.wait_first_frame()
            st = wait_for_flashtalk(w.client, w.proc, args.load_timeout)
            result["warm_start_s"] = time.monotonic() - w.t_start
            result["warm_still_first_frame_s"] = w.first_frame_s
            result["warm_profile"] = (st["renderer"].get("drift") or {}).get("profile")
            result["warm_start_reanchors"] = st["broadcast"].get("reanchors")
            result["warm_start_lateness_max_s"] = st["broadcast"].get("lateness_max_s")
        finally:
            w.stop()
    print_table(result, args)
    if args.json:
        shown = {**vars(args), "overrides": [mask_text(o) for o in args.overrides]}
        Path(args.json).write_text(json.dumps({"args": shown, "commit": commit(), "device": device_name(args),
                                               "result": result, "clips": pushed}, indent=2, default=str))
        print(f"\nJSON: {args.json}")
    if args.keep or args.work:
        print(f"work folder: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def device_name(args: argparse.Namespace) -> str:
    if args.tiny or args.device == "cpu":
        return f"cpu ({platform.processor() or platform.machine()})"
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.strip() or args.device


def _f(v: Any, fmt: str = "{:.3f}", unit: str = "") -> str:
    return "-" if v is None else fmt.format(v) + unit


def print_table(r: dict[str, Any], args: argparse.Namespace) -> None:
    family = "tiny (CPU)" if args.tiny else f"full-size random bf16 on {device_name(args)}"
    print(f"\ndaemon benchmark: FlashTalk renderer, {family}, commit {commit()}, config {args.config or 'own'}, "
          f"profile {r.get('profile')} (asked: {'tiny' if args.tiny else args.profile or 'the config'}), "
          f"settings {[mask_text(o) for o in args.overrides] or 'defaults'}")
    print("| measure | value |")
    print("|---|---|")
    rows = [
        ("start, cold (empty compile cache): still renderer's first frame / FlashTalk on air",
         f"{_f(r.get('still_first_frame_s'), '{:.1f}', ' s')} / {_f(r.get('cold_start_s'), '{:.0f}', ' s')}"),
        ("start, warm (the run's compile cache): still renderer's first frame / FlashTalk on air",
         f"{_f(r.get('warm_still_first_frame_s'), '{:.1f}', ' s')} / {_f(r.get('warm_start_s'), '{:.0f}', ' s')}"),
        ("pacer while the engine loads, cold / warm: re-anchors (freezes over 1 s), latest frame",
         f"{r.get('start_reanchors', '-')}, {_f(r.get('start_lateness_max_s'), '{:.3f}', ' s')} / "
         f"{r.get('warm_start_reanchors', '-')}, {_f(r.get('warm_start_lateness_max_s'), '{:.3f}', ' s')}"),
        ("pacer re-anchors during the run; renders abandoned by re-plans",
         f"{r.get('reanchors_in_run', '-')}; {r.get('renders_abandoned', '-')}"),
        ("run", f"{_f(r.get('minutes'), '{:.1f}', ' min')}, {r.get('clips', 0)} clips, {r.get('streamed_clips', 0)} "
                f"streamed at {paces_text(r.get('stream_pace'))} real time ({_f(r.get('clip_seconds'), '{:.0f}', ' s')} "
                f"of speech), {r.get('frames_out', '-')} frames out"),
        ("underrun frames (episodes)", f"{r.get('underrun_frames', '-')} ({r.get('underrun_episodes', '-')})"),
        ("underrun frames in clips / idle", f"{r.get('underrun_frames_clip', '-')} / {r.get('underrun_frames_idle', '-')}"),
        ("producer starved (pauses inside streamed clips)", _f(r.get("producer_starved_seconds"), "{:.2f}", " s")),
        ("speech share of air (asked)", f"{_f(r.get('speech_share'), '{:.0%}')} ({r.get('duty') or 'back to back'})"),
        ("clips started without their full head start", str(r.get("clips_over_floor", "-"))),
        ("chunk wall p50 / p99 / max", f"{_f(r.get('chunk_p50_s'))} / {_f(r.get('chunk_p99_s'))} / "
                                       f"{_f(r.get('chunk_max_s'))} s over {r.get('chunk_count', '-')} chunks"),
        ("render rate at the end (render s per air s); lead-in chunks' render s by frames; the ramp chosen",
         f"{_f(r.get('render_rate'))}; {short_text(r.get('short_chunk_render_s'))}; {r.get('lead_in_ramp') or '-'}"),
        ("GPU memory, torch allocated: load peak (up to the last warm-up) / steady peak (since)",
         f"{_f(r.get('gpu_load_peak_torch_gib'), '{:.1f}', ' GiB')} / {_f(r.get('gpu_peak_torch_gib'), '{:.1f}', ' GiB')}"),
        ("GPU memory, nvidia-smi (context and allocator cache included): whole run / since FlashTalk on air",
         f"{_f(r.get('gpu_peak_nvidia_smi_gib'), '{:.1f}', ' GiB')} / "
         f"{_f(r.get('gpu_on_air_peak_nvidia_smi_gib'), '{:.1f}', ' GiB')}"),
        ("clips not started by the end / producer errors",
         f"{r.get('clips_not_started', '-')} / {len(r.get('producer_errors') or [])}"),
        ("fallbacks to the still renderer / failures", f"{r.get('fallbacks_to_still', '-')} / {r.get('renderer_failures', '-')}"),
        ("renderer at the end", str(r.get("renderer_at_end", "-"))),
        ("recording; SIGTERM to exit", f"{r.get('recording_bytes', 0) / 2**20:.1f} MiB; exit {r.get('daemon_exit')} "
                                       f"after {_f(r.get('stop_s'), '{:.2f}', ' s')}"),
    ]
    for k, v in rows:
        print(f"| {k} | {v} |")
    lat = r.get("latency") or {}
    if lat:
        print("\npush -> first frame of the clip on air (client's send -> the `started` event's mono), and its stages"
              " (medians, s: the request to its ack; the ack to its first chunk's cut: the plan's wait for buffered"
              " air, admission, a stream's audio; the cut to rendered; rendered to the first frame out: frame store"
              " and pacer; `planned in`: the plan's estimate given in the ack). The encoder adds no frame"
              " (tests/media/test_encoder.py); RTMP is the network's.")
        print("| kind | n | p50 s | p99 s | max s | to ack | ack -> cut | render | -> air | planned in |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for kind, x in lat.items():
            print(f"| {kind} | {x['n']} | {x['p50_s']:.2f} | {x['p99_s']:.2f} | {x['max_s']:.2f} | "
                  f"{_f(x.get('ack_p50_s'))} | {_f(x.get('to_cut_p50_s'), '{:.2f}')} | "
                  f"{_f(x.get('render_p50_s'), '{:.2f}')} | {_f(x.get('to_air_p50_s'), '{:.2f}')} | "
                  f"{_f(x.get('planned_in_p50_s'), '{:.2f}')} |")
    if r.get("last_error"):
        print(f"\nlast renderer error: {r['last_error']}")
    if r.get("auto"):
        print("\nauto profile measurements: " + json.dumps(r["auto"]))


if __name__ == "__main__":
    raise SystemExit(main())
