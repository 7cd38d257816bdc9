"""Decode benchmark: one chunk's latents -> frames with the Wan VAE and with the TAEHV tiny decoder, as a table.

    python benchmarks/decoder_gpu.py                    # fast and quality chunk geometry, bf16 on cuda
    python benchmarks/decoder_gpu.py --dtype float16 --repeats 20 --cudnn-benchmark
    python benchmarks/decoder_gpu.py --tiny             # tiny modules on the CPU (checks the script)

Full-size modules with random weights (the numbers are about speed and memory only). Rows: the Wan VAE decode
as the engine calls it, and the tiny decoder as the engine calls it (`TinyVideoDecoder`, parallel over the
chunk's frames) and frame by frame (`parallel=False`). Times are the median of `--repeats` calls after
`--warmup` calls, CUDA-synchronised; peak memory is the allocator's peak during those calls.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from benchmarks.engine_gpu import materialise  # noqa: E402

from flashtalk_live.engine.profile import resolve_profile  # noqa: E402
from flashtalk_live.model.taehv import TAEHVConfig, TAEHVDecoder, TinyVideoDecoder  # noqa: E402
from flashtalk_live.model.vae import VAEConfig, WanVAE  # noqa: E402


def _time(fn, device: torch.device, warmup: int, repeats: int) -> tuple[float, float, tuple[int, ...]]:
    """(median ms, peak GiB, output shape)."""
    for _ in range(warmup):
        out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times) * 1000, peak, tuple(out.shape)


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", nargs="+", default=["fast", "quality"])
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--tiny", action="store_true", help="tiny modules and geometry on the CPU")
    args = ap.parse_args()

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else getattr(torch, args.dtype)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    vae = materialise(lambda: WanVAE(VAEConfig.tiny() if args.tiny else VAEConfig()), device, dtype, seed=1)
    taehv = materialise(lambda: TAEHVDecoder(TAEHVConfig.tiny() if args.tiny else TAEHVConfig()), device, dtype, 2)
    variants = {
        "wan vae": vae.decode,
        "taehv (parallel)": TinyVideoDecoder(taehv).decode,
        "taehv (frame by frame)": TinyVideoDecoder(taehv, parallel=False).decode,
    }
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}, {args.dtype if not args.tiny else 'float32'}, cudnn.benchmark={args.cudnn_benchmark}, "
          f"median of {args.repeats} after {args.warmup} warm-up calls")
    head = f"{'profile':8s} {'latents':>14s} {'decoder':24s} {'frames':>18s} {'ms':>9s} {'peak GiB':>9s}"
    print(head + "\n" + "-" * len(head))
    for pname in args.profiles:
        p = resolve_profile(pname)
        h, w = (4, 4) if args.tiny else p.latent_hw
        t = 2 if args.tiny else p.latent_frames
        latents = torch.randn(1, 16, t, h, w, device=device, dtype=dtype)
        for vname, fn in variants.items():
            ms, peak, shape = _time(lambda: fn(latents), device, args.warmup, args.repeats)
            print(f"{pname:8s} {str((t, h, w)):>14s} {vname:24s} {str(shape[2:]):>18s} {ms:9.1f} {peak:9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
