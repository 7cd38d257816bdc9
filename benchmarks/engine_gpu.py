"""Engine benchmark: N chunks of a profile on full-size random weights, per-stage times and peak memory as a table.

    python benchmarks/engine_gpu.py                      # 14B DiT etc., random bf16 on cuda, quality 768x448, 5 chunks
    python benchmarks/engine_gpu.py --profile fast --chunks 8 --attention flash
    python benchmarks/engine_gpu.py --tiny               # the tiny test family on the CPU (checks the script)

The modules are built on `meta` and materialised directly on the device with random values (no download,
no host copy of 38 GB): matrices N(0, 1/fan_in), norm scales 1, biases 0.  The numbers are only about speed
and memory; the pictures are noise.  Stages: audio_features (8-s window through wav2vec2), dit_step_i,
vae_decode, colour_correction, motion_encode, host_copy, drift_measure (CLIP identity + Lab of one frame).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flashtalk_live.engine.drift import measure_drift  # noqa: E402
from flashtalk_live.engine.engine import EngineModels, FlashTalkEngine  # noqa: E402
from flashtalk_live.engine.profile import resolve_profile  # noqa: E402


@torch.no_grad()
def randomise_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every parameter/buffer in place on its device: O(1) activations, no host round trip."""
    gen = torch.Generator(next(module.parameters()).device).manual_seed(seed)
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if not t.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "gamma" or (leaf == "weight" and t.ndim == 1):
            t.fill_(1.0)
        elif t.ndim <= 1:
            t.zero_()
        elif leaf == "modulation":
            t.normal_(0.0, 0.05, generator=gen)
        else:
            t.normal_(0.0, 1.0 / math.sqrt(max(1, math.prod(t.shape[1:]))), generator=gen)
    return module


def materialise(factory, device: torch.device, dtype: torch.dtype, seed: int) -> torch.nn.Module:
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate in the target dtype: the 14B DiT in fp32 would not fit
    try:
        with torch.device("meta"):
            module = factory()
    finally:
        torch.set_default_dtype(prev)
    module = module.to_empty(device=device)
    return randomise_(module, seed).eval().requires_grad_(False)


def build_models(tiny: bool, device: torch.device, dtype: torch.dtype) -> tuple[EngineModels, int]:
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from flashtalk_live.model.clip import VIT_H_14, CLIPVisual
    from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT
    from flashtalk_live.model.vae import VAEConfig, WanVAE

    if tiny:
        from flashtalk_live.checkpoints.fake import tiny_configs

        dcfg, vcfg, ccfg, _t5, w2v = tiny_configs()
        wcfg = Wav2Vec2Config(**w2v)
    else:
        dcfg, vcfg, ccfg, wcfg = DiTConfig.flashtalk_14b(), VAEConfig.released(), VIT_H_14, Wav2Vec2Config()
    clip_dtype = torch.float16 if device.type == "cuda" and dtype != torch.float32 else dtype
    dit = materialise(lambda: FlashTalkDiT(dcfg), device, dtype, 1)
    vae = materialise(lambda: WanVAE(vcfg), device, dtype, 2)
    clip = materialise(lambda: CLIPVisual(ccfg), device, clip_dtype, 3)
    wav2vec = materialise(lambda: Wav2Vec2Model(wcfg), device, torch.float32, 4)
    with torch.no_grad():  # weight-norm g of the positional conv must stay positive
        for n, p in wav2vec.named_parameters():
            if n.endswith("original0"):
                p.fill_(0.5)
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=False)
    return EngineModels(dit=dit, vae=vae, clip=clip, wav2vec=wav2vec, feature_extractor=fe), dcfg.text_dim


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default=None, help="quality (default), fast or a .toml; --tiny defaults to 64x32/13/5")
    ap.add_argument("--chunks", type=int, default=5)
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"], help="default bf16 (fp32 --tiny)")
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "flash"])
    ap.add_argument("--tiny", action="store_true", help="tiny random family on the CPU: checks this script")
    ap.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks (as model.compile = true)")
    args = ap.parse_args(argv)

    from flashtalk_live.model.attention import set_default_backend

    set_default_backend(args.attention)
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    if args.tiny:
        torch.set_num_threads(1)
    profile = resolve_profile(args.profile) if args.profile else (
        resolve_profile("quality", name="tiny", height=64, width=32, frame_num=13) if args.tiny
        else resolve_profile("quality"))
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("CUDA is not available (use --tiny on a CPU)", file=sys.stderr)
        return 2

    t0 = time.perf_counter()
    models, text_dim = build_models(args.tiny, device, dtype)
    if args.compile:
        from flashtalk_live.engine.engine import compile_dit_blocks

        compile_dit_blocks(models.dit)
    if cuda:
        torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    weights_gb = sum(p.numel() * p.element_size() for m in (models.dit, models.vae, models.clip, models.wav2vec)
                     for p in m.parameters()) / 1e9
    engine = FlashTalkEngine(models, profile, device, dtype, timing=True)
    rng = np.random.default_rng(0)
    image = (rng.random((profile.height, profile.width, 3)) * 255).astype(np.uint8)
    context = torch.randn(24, text_dim, generator=torch.Generator().manual_seed(0)) * 0.1
    t0 = time.perf_counter()
    engine.start_session(image, "benchmark", context=context)
    if cuda:
        torch.cuda.synchronize()
    session_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    window = np.zeros(profile.window_samples, np.float32)
    spf = profile.sample_rate // profile.fps
    rows: list[dict[str, float]] = []
    for i in range(args.chunks):
        t = np.arange(profile.new_frames * spf) / profile.sample_rate
        speech = (0.2 * np.sin(2 * np.pi * (150 + 20 * i) * t) * (1 + np.sin(2 * np.pi * 4 * t))).astype(np.float32)
        window = np.concatenate([window, speech])[-profile.window_samples:]
        wall0 = time.perf_counter()
        out = engine.generate(engine.audio_features(window))
        timings = dict(out.timings)
        t1 = time.perf_counter()
        measure_drift(engine.session, out, models.clip)  # type: ignore[arg-type]
        if cuda:
            torch.cuda.synchronize()
        timings["drift_measure"] = time.perf_counter() - t1
        timings["wall"] = time.perf_counter() - wall0
        rows.append(timings)
        print(f"chunk {i}: {timings['wall']:.3f} s wall", file=sys.stderr)

    stages = [k for k in rows[0] if k not in ("total", "wall")] + ["total", "wall"]
    steady = rows[1:] if len(rows) > 1 else rows
    print(f"\nFlashTalk engine benchmark: profile {profile.name} {profile.height}x{profile.width}, "
          f"{profile.frame_num} frames ({profile.motion_frames} motion, {profile.new_frames} new), "
          f"{profile.sample_steps} steps, {profile.seq_len} tokens")
    dev_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"device {dev_name}, dtype {str(dtype).removeprefix('torch.')}, attention {args.attention}, "
          f"{'tiny random' if args.tiny else 'full-size random'} weights {weights_gb:.2f} GB "
          f"(built in {build_s:.1f} s), session prepare {session_s:.2f} s")
    head = f"{'stage (ms)':20s}" + "".join(f"{'chunk ' + str(i):>10s}" for i in range(len(rows))) + \
        f"{'mean 1..':>10s}{'median':>10s}"
    print(head)
    print("-" * len(head))
    for k in stages:
        vals = [r.get(k, float("nan")) * 1000 for r in rows]
        st = [r.get(k, float("nan")) * 1000 for r in steady]
        print(f"{k:20s}" + "".join(f"{v:10.1f}" for v in vals) + f"{statistics.fmean(st):10.1f}"
              f"{statistics.median(st):10.1f}")
    chunk_s = profile.chunk_seconds
    mean_wall = statistics.fmean(r["wall"] for r in steady)
    print(f"\nreal-time budget {chunk_s * 1000:.0f} ms per chunk ({profile.new_frames} frames at {profile.fps} fps); "
          f"steady wall {mean_wall * 1000:.0f} ms = {mean_wall / chunk_s:.2f}x real time")
    if cuda:
        print(f"peak GPU memory allocated {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB, "
              f"reserved {torch.cuda.max_memory_reserved(device) / 2**30:.2f} GiB "
              f"(weights {weights_gb / 1.073741824:.2f} GiB)")
    else:
        import resource

        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
