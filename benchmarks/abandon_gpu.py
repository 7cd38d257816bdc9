"""How fast an abandoned chunk stops, and what stopping between DiT blocks costs a whole chunk, on one GPU.

    python benchmarks/abandon_gpu.py                                  # realtime, run-ahead 0,1,2,4 blocks
    python benchmarks/abandon_gpu.py --profiles realtime,native --run-ahead 0,2 --chunks 12 --trials 20
    python benchmarks/abandon_gpu.py --tiny                           # tiny random family on the CPU (smoke)

A re-plan that discards the chunk being rendered sets its `abandoned` event; the engine stops at the next
denoising step (run-ahead 0) or, with `model.abandon_run_ahead_blocks = N`, between DiT blocks with the host kept
at most N blocks ahead of the GPU. Per profile and N, with the daemon's engine choices (full-size random weights,
fp8 with fast accumulation, TAEHV, compiled blocks): the whole chunk's wall p50/p99 with the check in place (the
bounded lead's cost), then --trials chunks whose event is set from another thread at a random point of the chunk,
and the time from the set to RenderAbandoned (stop p50/p99/max; a chunk that ended first counts its end). Nothing
here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from benchmarks.engine_gpu import DECODERS, VARIANTS, tiny_profile  # noqa: E402
from flashtalk_live.checkpoints.random_weights import random_engine_models  # noqa: E402
from flashtalk_live.chunks import RenderAbandoned  # noqa: E402
from flashtalk_live.engine.engine import FlashTalkEngine, compile_dit_blocks  # noqa: E402
from flashtalk_live.engine.profile import Profile, resolve_profile  # noqa: E402
from support.stamp import commit  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(engine: FlashTalkEngine, profile: Profile, chunks: int, trials: int, seed: int) -> dict[str, Any]:
    device = engine.device
    rng = np.random.default_rng(seed)
    window = np.zeros(profile.window_samples, np.float32)
    t = np.arange(profile.new_frames * (profile.sample_rate // profile.fps)) / profile.sample_rate
    window[-t.size:] = (0.2 * np.sin(2 * np.pi * 170 * t)).astype(np.float32)
    features = engine.audio_features(window)
    walls = []
    for _ in range(chunks):  # whole chunks, the check asked at every block and step
        _sync(device)
        t0 = time.perf_counter()
        engine.generate(features, abandoned=lambda: False)
        _sync(device)
        walls.append(time.perf_counter() - t0)
    steady = walls[1:] or walls
    p50 = float(np.percentile(steady, 50))
    stops, ended = [], 0
    for _ in range(trials):
        event = threading.Event()
        set_at: list[float] = []
        delay = float(rng.uniform(0.05, 0.9)) * p50

        def fire() -> None:
            time.sleep(delay)
            set_at.append(time.perf_counter())
            event.set()

        _sync(device)
        timer = threading.Thread(target=fire)
        timer.start()
        try:
            engine.generate(features, abandoned=event.is_set)
            _sync(device)
            ended += 1
        except RenderAbandoned:
            pass
        done = time.perf_counter()
        timer.join()
        stops.append(done - set_at[0])
    return {"chunks": len(steady), "wall_p50_s": p50, "wall_p99_s": float(np.percentile(steady, 99)),
            "trials": trials, "ended_first": ended, "stop_p50_s": float(np.percentile(stops, 50)),
            "stop_p99_s": float(np.percentile(stops, 99)), "stop_max_s": float(max(stops))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="realtime")
    ap.add_argument("--run-ahead", default="0,1,2,4", help="comma list of model.abandon_run_ahead_blocks values")
    ap.add_argument("--variant", default=None, help=f"one of {list(VARIANTS)} (default fp8-fast-accum; --tiny bf16)")
    ap.add_argument("--decoder", default=None, help=f"one of {list(DECODERS)} (default taehv; --tiny wan)")
    ap.add_argument("--chunks", type=int, default=12, help="whole chunks per row (the first is left out)")
    ap.add_argument("--trials", type=int, default=20, help="abandoned chunks per row")
    ap.add_argument("--tiny", action="store_true", help="tiny random family on the CPU, not compiled (smoke)")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.tiny:
        torch.set_num_threads(1)
    else:
        torch.backends.cudnn.benchmark = True
    variant = args.variant or ("bf16" if args.tiny else "fp8-fast-accum")
    decoder = args.decoder or ("wan" if args.tiny else "taehv")
    models = random_engine_models("tiny" if args.tiny else "full", device, dtype)
    ctx: dict[str, Any] = {"device": device, "tiny": args.tiny, "notes": [], "fp8_keep": (2, 3),
                           "fp8_backend": "scaled_mm"}
    VARIANTS[variant](models, ctx)
    DECODERS[decoder](models, ctx)
    if not args.tiny:
        compile_dit_blocks(models.dit)
    text_dim = models.text.text_dim  # type: ignore[union-attr]
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    context = torch.randn(24, text_dim, generator=torch.Generator().manual_seed(0)) * 0.1
    rows = []
    for name in [p.strip() for p in args.profiles.split(",") if p.strip()]:
        profile = tiny_profile(name) if args.tiny else resolve_profile(name)
        for ahead in [int(x) for x in args.run_ahead.split(",")]:
            engine = FlashTalkEngine(models, profile, device, dtype, abandon_run_ahead_blocks=ahead)
            engine.start_session(image, "benchmark", context=context)
            engine.generate(engine.audio_features(np.zeros(profile.window_samples, np.float32)))  # compile, tune
            row = {"profile": profile.name, "run_ahead": ahead, **measure(engine, profile, args.chunks, args.trials, 0)}
            rows.append(row)
            print(f"  {row}", file=sys.stderr, flush=True)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"abandonment: {gpu}, {variant}, {decoder}, {'tiny' if args.tiny else 'full-size'} random weights, "
          f"{'eager' if args.tiny else 'compiled'}, commit {commit()}, torch {torch.__version__}")
    print(f"{'profile':<14} {'run-ahead':>9} {'chunks':>6} {'wall p50':>9} {'wall p99':>9} {'trials':>6} "
          f"{'ended':>5} {'stop p50':>9} {'stop p99':>9} {'stop max':>9}")
    for r in rows:
        print(f"{r['profile']:<14} {r['run_ahead']:>9} {r['chunks']:>6} {r['wall_p50_s']:>9.3f} {r['wall_p99_s']:>9.3f} "
              f"{r['trials']:>6} {r['ended_first']:>5} {r['stop_p50_s']:>9.3f} {r['stop_p99_s']:>9.3f} "
              f"{r['stop_max_s']:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
