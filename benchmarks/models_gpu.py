"""One forward of each full-size module on random bf16 weights at the default geometry; time and peak memory.

    python benchmarks/models_gpu.py            # cuda, 768x448, 33 frames (9 latent frames), bf16
    python benchmarks/models_gpu.py --tiny     # the tiny family on the CPU: checks the script

DiT: one denoising forward (12,096 tokens). VAE: encode of the 33-frame clip, decode of its 9 latents.
CLIP: the reference image through 31 of 32 blocks. Each module is built on `meta`, filled with random values on
the device (benchmarks/engine_gpu.py's materialise), timed as the median of 3 runs after one warm-up, then freed.
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

from flashtalk_live.model.clip import VIT_H_14, CLIPVisual, CLIPVisualConfig  # noqa: E402
from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT  # noqa: E402
from flashtalk_live.model.vae import VAEConfig, WanVAE  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 3) -> tuple[float, float]:
    """(median seconds, peak GiB allocated during the runs)."""
    with torch.no_grad():
        fn()
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(times), peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--width", type=int, default=448)
    ap.add_argument("--frames", type=int, default=33)
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    if args.tiny:
        args.height, args.width, args.frames = 64, 32, 5
        import json

        fixture = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "parity" / "dit" / "config.json"
        dcfg = DiTConfig.from_dict(json.loads(fixture.read_text()))
        vcfg, ccfg = VAEConfig.tiny(), CLIPVisualConfig(dim=64, num_heads=2, num_layers=3, patch_size=14)
    else:
        dcfg, vcfg, ccfg = DiTConfig.flashtalk_14b(), VAEConfig.released(), VIT_H_14
    t_lat = (args.frames - 1) // 4 + 1
    h, w = args.height // 8, args.width // 8
    rows = []
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")

    dit = materialise(lambda: FlashTalkDiT(dcfg), device, dtype, 1)
    params = sum(p.numel() for p in dit.parameters())
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(1, 16, t_lat, h, w, device=device, dtype=dtype, generator=g)
    y = torch.randn(1, 20, t_lat, h, w, device=device, dtype=dtype, generator=g)
    ctx = torch.randn(1, 100, dcfg.text_dim, device=device, dtype=dtype, generator=g)
    clip_fea = torch.randn(1, 257, dcfg.clip_dim, device=device, dtype=dtype, generator=g)
    audio = torch.randn(1, args.frames, 5, dcfg.audio_layers, dcfg.audio_channels, device=device, dtype=dtype,
                        generator=g)
    t = torch.tensor([750.0], device=device)
    tokens = t_lat * (h // 2) * (w // 2)
    sec, peak = timed(lambda: dit(x, t, ctx, clip_fea, y, audio), device)
    rows.append(("DiT forward", f"{params / 1e9:.2f} B", f"{tokens} tokens", sec, peak))
    del dit, x, y, ctx, clip_fea, audio
    if device.type == "cuda":
        torch.cuda.empty_cache()

    vae = materialise(lambda: WanVAE(vcfg), device, dtype, 2)
    video = torch.rand(1, 3, args.frames, args.height, args.width, device=device, dtype=dtype) * 2 - 1
    lat = vae.encode(video)
    sec, peak = timed(lambda: vae.encode(video), device)
    rows.append(("VAE encode", f"{sum(p.numel() for p in vae.parameters()) / 1e6:.0f} M", f"{args.frames} frames", sec, peak))
    sec, peak = timed(lambda: vae.decode(lat), device)
    rows.append(("VAE decode", "", f"{t_lat} latents", sec, peak))
    del vae, video, lat
    if device.type == "cuda":
        torch.cuda.empty_cache()

    clip_dtype = torch.float32 if args.tiny else torch.float16
    clip = materialise(lambda: CLIPVisual(ccfg), device, clip_dtype, 3)
    img = torch.rand(1, 3, 1, args.height, args.width, device=device) * 2 - 1
    sec, peak = timed(lambda: clip.encode(img.to(clip_dtype)), device)
    rows.append(("CLIP visual (31 blocks)", f"{sum(p.numel() for p in clip.parameters()) / 1e6:.0f} M", "1 image", sec, peak))

    print(f"\n{args.height}x{args.width}, {args.frames} frames, {str(dtype).replace('torch.', '')} (CLIP {'fp32' if args.tiny else 'fp16'})")
    print(f"| module | params | input | time (median of 3) | peak GPU memory |")
    print("|---|---|---|---|---|")
    for name, p, inp, sec, peak in rows:
        print(f"| {name} | {p} | {inp} | {sec * 1000:.1f} ms | {peak:.2f} GiB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
