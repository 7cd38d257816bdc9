"""play_now latency on air (issue 10 item 4): a real daemon process per renderer, a long clip on air, then play_now
clips; for each, the frames of air from the command to the new clip's `started`, against the bound "one chunk plus
one chunk render" computed from the render rate the daemon measured (status.plan.render_rate).

    python benchmarks/play_now_latency.py                      # still renderer, then the tiny FlashTalk on the CPU
    python benchmarks/play_now_latency.py --only still --trials 5
    python benchmarks/play_now_latency.py --only flashtalk --set model.weights_dir=... --set model.device=cuda
        (GPU: the lead's run; --set items go to the flashtalk row, e.g. the shipped profile and real weights)

Prints one table row per renderer: trials, latency median/max in frames and seconds, the measured render rate and
the bound. The clip on air is cut by each play_now and replays after it (docs/protocol.md), so it stays on air.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from support.audiogen import encode  # noqa: E402
from support.daemon_harness import DaemonProcess, wait_for  # noqa: E402

FPS, CF = 25, 28
TINY_PROFILE = 'base = "quality"\nheight = 32\nwidth = 32\nframe_num = 29\nmotion_frames = 1\n'


def flashtalk_settings(tmp: Path, extra: list[str]) -> list[str]:
    if any(e.startswith("model.weights_dir") for e in extra):
        return ['renderer.kind="flashtalk"', *extra]
    from flashtalk_live.checkpoints.fake import write_fake_release

    rel = write_fake_release(tmp / "models")
    (tmp / "tiny.toml").write_text(TINY_PROFILE)
    return ['renderer.kind="flashtalk"', f'model.weights_dir="{rel.weights_dir}"',
            f'model.wav2vec_dir="{rel.wav2vec_dir}"', f'model.profile="{tmp / "tiny.toml"}"', 'model.device="cpu"',
            'model.dtype="float32"', f"video.chunk_frames={CF}", "video.width=48", "video.height=80",
            "renderer.deadline_factor=20", *extra]


def measure(name: str, settings: list[str], trials: int, tmp: Path) -> dict:
    d = DaemonProcess(tmp / name, [{"name": "rec", "url": str(tmp / f"{name}.flv")}], settings).start(120)
    ev = d.events()
    seen: list[dict] = []
    lat, rates = [], []
    try:
        with d.client(timeout_s=30) as c:
            ev.sync(c)
            if "flashtalk" in name:
                wait_for(ev, lambda e: e["type"] == "renderer_changed" and e.get("renderer") == "flashtalk", 600, seen)
            x = c.enqueue(encode("wav_s16", seconds=30.0, freq=500.0))["segment_id"]
            wait_for(ev, lambda e: e["type"] == "started" and e.get("segment_id") == x, 300, seen)
            for i in range(trials):
                time.sleep(2.0)
                st = c.status()
                at_cmd = round(st["broadcast"]["media_time_s"] * FPS)
                b = c.play_now(encode("wav_s16", seconds=1.0, freq=900.0 + 100 * i))["segment_id"]
                s = wait_for(ev, lambda e: e["type"] == "started" and e.get("segment_id") == b, 300, seen)
                lat.append(s["frame"] - at_cmd)
                rates.append(c.status()["plan"]["render_rate"] or 0.0)
                wait_for(ev, lambda e: e["type"] == "started" and e.get("segment_id") == x, 300, seen)  # X again
        return {"name": name, "trials": trials, "lat": lat, "rate": max(rates)}
    finally:
        ev.close()
        d.stop()


def renderer_rows(measure: Callable[[str, list[str], int, Path], dict], prefix: str) -> list[dict]:
    """The rows of a per-renderer benchmark: --only / --trials / --set parsed, then `measure(name, settings,
    trials, tmp)` for the still renderer and the FlashTalk one (the tiny release on the CPU, or --set's)."""
    ap = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["still", "flashtalk"])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], help="settings for the flashtalk row")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    rows = []
    try:
        if a.only in (None, "still"):
            rows.append(measure("still", [], a.trials, tmp))
        if a.only in (None, "flashtalk"):
            rows.append(measure("flashtalk", flashtalk_settings(tmp, a.set), a.trials, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main() -> int:
    rows = renderer_rows(measure, "ftl-pn-")
    print(f"{'renderer':<10} {'trials':>6} {'median fr':>9} {'max fr':>6} {'median s':>8} {'max s':>6} "
          f"{'rate':>6} {'bound fr':>8} {'bound s':>7}")
    for r in rows:
        bound = CF + math.ceil(r["rate"] * CF)
        med = statistics.median(r["lat"])
        print(f"{r['name']:<10} {r['trials']:>6} {med:>9.0f} {max(r['lat']):>6} {med / FPS:>8.2f} "
              f"{max(r['lat']) / FPS:>6.2f} {r['rate']:>6.2f} {bound:>8} {bound / FPS:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
