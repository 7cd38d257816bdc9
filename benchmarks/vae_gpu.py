"""VAE decode and motion encode of one chunk: the frame-by-frame loop against multi-frame passes, and layouts.

    python benchmarks/vae_gpu.py                       # full-size Wan VAE, random bf16 weights, cuda: fast + quality
    python benchmarks/vae_gpu.py --compile             # also torch.compile of the decoder / encoder
    python benchmarks/vae_gpu.py --tiny                # the tiny VAE on the CPU in float32 (checks the script)

Per profile (engine/profile.py): decode of the chunk's `latent_frames` latents (fast 704x416: 8, quality
768x448: 9) as the engine calls it (a fresh call), then the motion re-encode of its last `motion_frames` frames
(fast: 1, quality: 5). Variants: passes = `latents_per_pass` (1: the reference's loop, 0: the whole chunk in
one pass), channels-last 3-D on/off, `torch.backends.cudnn.benchmark` on/off, torch.compile on/off (--compile).
Each row: median and min of --repeats calls after --warmup calls (CUDA events around each call), peak memory
above the weights and inputs during the timed calls, and the relative L2 distance of the output to the loop's
(the numerics check: float rounding only). Weights are N(0, 1/fan_in) as in benchmarks/engine_gpu.py; the
pictures are noise, only speed and memory mean anything.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from benchmarks.engine_gpu import materialise  # noqa: E402

from flashtalk_live.engine.profile import resolve_profile  # noqa: E402
from flashtalk_live.model.vae import VAEConfig, WanVAE  # noqa: E402


def time_calls(fn: Callable[[], torch.Tensor], device: torch.device, warmup: int, repeats: int
               ) -> tuple[torch.Tensor, list[float], float]:
    """(last output, seconds per call, peak GiB allocated above what was allocated before the timed calls)."""
    with torch.no_grad():
        for _ in range(warmup):
            out = fn()
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        seconds = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                out = fn()
                end.record()
                end.synchronize()
                seconds.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                out = fn()
                seconds.append(time.perf_counter() - t0)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if cuda else float("nan")
    return out, seconds, peak


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    d = got.double() - want.double()
    return (d.norm() / want.double().norm().clamp_min(1e-30)).item()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny VAE on the CPU, float32, small frames (smoke check)")
    ap.add_argument("--profiles", default="fast,quality", help="comma-separated profile names")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3, help="calls before timing (cudnn.benchmark tunes in these)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the decoder and encoder")
    ap.add_argument("--no-loop", action="store_true", help="skip the frame-by-frame rows except the reference run")
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    cfg = VAEConfig.tiny() if args.tiny else VAEConfig.released()
    if args.tiny:
        args.repeats, args.warmup = min(args.repeats, 2), min(args.warmup, 1)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, cuDNN "
              f"{torch.backends.cudnn.version()}")

    vaes = {False: materialise(lambda: WanVAE(cfg), device, dtype, 2)}
    if args.compile:
        compiled = materialise(lambda: WanVAE(cfg), device, dtype, 2)  # same seed: the same weights
        compiled.configure(compile=True)
        vaes[True] = compiled
    rows = []
    for name in args.profiles.split(","):
        p = resolve_profile(name.strip())
        height, width = (64, 32) if args.tiny else (p.height, p.width)
        g = torch.Generator(device).manual_seed(0)
        latents = torch.randn(1, cfg.z_dim, p.latent_frames, height // 8, width // 8, device=device, dtype=dtype,
                              generator=g)
        geometry = f"{p.name} {width}x{height}"
        ref_video = ref_motion = None
        # The first row (loop, NCDHW, no autotuning, no compile) is the reference for the rel L2 column.
        for per_pass, channels_last, cudnn_bench, comp in itertools.product((1, 0), (False, True), (False, True),
                                                                             sorted(vaes)):
            if per_pass == 1 and args.no_loop and (channels_last or cudnn_bench or comp):
                continue
            if device.type == "cpu" and (channels_last or cudnn_bench):
                continue  # neither means anything on the CPU; the --tiny run only checks the script
            vae = vaes[comp].configure(latents_per_pass=per_pass, channels_last=channels_last)
            torch.backends.cudnn.benchmark = cudnn_bench
            variant = (f"{'loop' if per_pass == 1 else 'passes'}, {'NDHWC' if channels_last else 'NCDHW'}, "
                       f"cudnn.benchmark {'on' if cudnn_bench else 'off'}, compile {'on' if comp else 'off'}")
            video, sec, peak = time_calls(lambda: vae.decode(latents), device, args.warmup, args.repeats)
            if ref_video is None:
                ref_video = video.clone()
            rows.append((geometry, f"decode {p.latent_frames} latents -> {video.shape[2]} frames", variant, sec,
                         peak, rel_l2(video, ref_video)))
            clip = ref_video[:, :, -p.motion_frames:].contiguous()
            motion, sec, peak = time_calls(lambda: vae.encode(clip), device, args.warmup, args.repeats)
            if ref_motion is None:
                ref_motion = motion.clone()
            rows.append((geometry, f"motion encode {p.motion_frames} frames", variant, sec, peak,
                         rel_l2(motion, ref_motion)))
            print(f"  {geometry:22s} {variant:62s} decode {statistics.median(rows[-2][3]) * 1e3:8.1f} ms  "
                  f"encode {statistics.median(sec) * 1e3:7.1f} ms", flush=True)
            del video, motion
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print(f"\nWan VAE ({sum(p.numel() for p in vaes[False].parameters()) / 1e6:.0f} M params, random "
          f"{str(dtype).replace('torch.', '')} weights), median/min of {args.repeats} calls after {args.warmup} "
          f"warm-up calls, {'CUDA events' if device.type == 'cuda' else 'perf_counter'}")
    print("| profile | call | variant | median | min | peak memory above inputs | rel L2 vs loop |")
    print("|---|---|---|---|---|---|---|")
    for geometry, call, variant, sec, peak, rel in rows:
        print(f"| {geometry} | {call} | {variant} | {statistics.median(sec) * 1e3:.1f} ms | {min(sec) * 1e3:.1f} ms "
              f"| {'n/a' if peak != peak else f'{peak:.2f} GiB'} | {rel:.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
