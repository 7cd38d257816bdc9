"""Multi-GPU engine benchmark: the FlashTalk chunk loop at 1, 2, 4, 8 ranks (Ulysses), per profile and stage.

    python benchmarks/engine_multigpu.py                              # 1,2,4,8 GPUs x quality,fast; 14B random bf16
    python benchmarks/engine_multigpu.py --gpus 1,8 --profiles quality --chunks 6 --attention flash
    python benchmarks/engine_multigpu.py --tiny --world-size 2        # CPU + gloo, tiny random family (checks the script)
    python benchmarks/engine_multigpu.py --gpus 1,8 --split-vae      # VAE decode split by height over the ranks too

Every world size is a real job from the launcher (`flashtalk_live.parallel.launch.launch_workers`): this
process is rank 0 (audio features, sampler, VAE, colour, motion encode, all on its GPU) and N-1 workers
hold the DiT only (with --split-vae also the VAE, and the decode is split by height over all ranks). Weights are random (engine_gpu.py's materialise: no download); the numbers are about
speed. Printed per (ranks, profile): per-stage ms (steady chunks: all but the first), chunk wall time, fps
of new frames, speed-up over 1 rank and scaling efficiency = speed-up / ranks, bytes rank 0 broadcast.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from benchmarks.engine_gpu import build_models, materialise  # noqa: E402

from flashtalk_live.engine.engine import FlashTalkEngine  # noqa: E402
from flashtalk_live.engine.profile import resolve_profile  # noqa: E402
from flashtalk_live.parallel.launch import WorkerSpec, launch_workers  # noqa: E402


def dit_factory(*, device: torch.device, dtype: torch.dtype, tiny: bool) -> torch.nn.Module:
    """Worker ranks' DiT: the same random weights as rank 0's (same seed and initialiser)."""
    from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT

    if tiny:
        from flashtalk_live.checkpoints.fake import tiny_configs

        cfg = tiny_configs()[0]
    else:
        cfg = DiTConfig.flashtalk_14b()
    return materialise(lambda: FlashTalkDiT(cfg), device, dtype, 1)


def vae_factory(*, device: torch.device, dtype: torch.dtype, tiny: bool) -> torch.nn.Module:
    """Worker ranks' VAE for --split-vae: the same random weights as rank 0's (build_models' seed 2)."""
    from flashtalk_live.model.vae import VAEConfig, WanVAE

    cfg = VAEConfig.tiny() if tiny else VAEConfig.released()
    return materialise(lambda: WanVAE(cfg), device, dtype, 2)


def profiles(names: list[str], tiny: bool):
    out = []
    for n in names:
        if tiny:  # the same shape of work at 64x32
            base = {"quality": dict(frame_num=13, motion_frames=5, sample_steps=4),
                    "fast": dict(frame_num=9, motion_frames=1, sample_steps=2)}[n]
            out.append(resolve_profile(n, name=f"{n}-tiny", height=64, width=32, **base))
        else:
            out.append(resolve_profile(n))
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_profile(models, profile, device, dtype, text_dim: int, chunks: int) -> list[dict[str, float]]:
    engine = FlashTalkEngine(models, profile, device, dtype, timing=True)
    rng = np.random.default_rng(0)
    image = (rng.random((profile.height, profile.width, 3)) * 255).astype(np.uint8)
    context = torch.randn(24, text_dim, generator=torch.Generator().manual_seed(0)) * 0.1
    engine.start_session(image, "benchmark", context=context)
    window = np.zeros(profile.window_samples, np.float32)
    spf = profile.sample_rate // profile.fps
    rows = []
    for i in range(chunks):
        t = np.arange(profile.new_frames * spf) / profile.sample_rate
        speech = (0.2 * np.sin(2 * np.pi * (150 + 20 * i) * t) * (1 + np.sin(2 * np.pi * 4 * t))).astype(np.float32)
        window = np.concatenate([window, speech])[-profile.window_samples:]
        sync(device)
        wall0 = time.perf_counter()
        out = engine.generate(engine.audio_features(window))
        sync(device)
        timings = dict(out.timings)
        timings["wall"] = time.perf_counter() - wall0
        rows.append(timings)
        print(f"  {profile.name} chunk {i}: {timings['wall'] * 1000:.0f} ms", file=sys.stderr, flush=True)
    return rows


def bench_world(n: int, args, device_type: str, dtype: torch.dtype, profs) -> dict[str, dict]:
    """One job of n ranks: every profile, returns {profile: {"rows": [...], "bytes": per-chunk broadcast}}."""
    handle = None
    if n > 1:
        spec = WorkerSpec(num_heads=2 if args.tiny else 40, devices=list(range(n)), device_type=device_type,
                          dtype=str(dtype).removeprefix("torch."), attention=args.attention,
                          factory="engine_multigpu:dit_factory", factory_args={"tiny": args.tiny},
                          threads=1 if device_type == "cpu" else None, extra_sys_path=[str(HERE), str(HERE.parent)],
                          vae_factory="engine_multigpu:vae_factory" if args.split_vae else None,
                          vae_factory_args={"tiny": args.tiny} if args.split_vae else {})
        t0 = time.perf_counter()
        handle = launch_workers(spec)
        print(f"[{n} ranks] joined in {time.perf_counter() - t0:.1f} s: {handle.pg.describe()}", file=sys.stderr)
        device = handle.device
    else:
        device = torch.device("cuda:0" if device_type == "cuda" else "cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    results: dict[str, dict] = {}
    try:
        models, text_dim = build_models(args.tiny, device, dtype)
        client = handle.wrap_dit(models.dit) if handle else None
        if client is not None:
            models.dit = client
            if args.split_vae:
                models.vae = handle.wrap_vae(models.vae, enabled=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for p in profs:
            b0 = client.bytes_sent if client else 0
            rows = run_profile(models, p, device, dtype, text_dim, args.chunks)
            sent = ((client.bytes_sent - b0) / len(rows)) if client else 0.0
            results[p.name] = {"rows": rows, "bytes": sent}
        if device.type == "cuda":
            results["_peak_gib"] = {"rows": [], "bytes": torch.cuda.max_memory_allocated(device) / 2**30}
        del models, client
    finally:
        if handle is not None:
            codes = handle.close()
            print(f"[{n} ranks] workers exited {codes}", file=sys.stderr)
        gc.collect()
        if device_type == "cuda":
            torch.cuda.empty_cache()
    return results


def report(all_results: dict[int, dict[str, dict]], profs) -> None:
    for p in profs:
        print(f"\nprofile {p.name}: {p.height}x{p.width}, {p.frame_num} frames ({p.new_frames} new), "
              f"{p.sample_steps} steps, {p.seq_len} tokens; real time = {p.chunk_seconds * 1000:.0f} ms per chunk")
        stages: list[str] = []
        for res in all_results.values():
            for r in res[p.name]["rows"]:
                stages += [k for k in r if k not in stages and k not in ("total", "wall")]
        worlds = sorted(all_results)
        head = f"{'stage (ms, steady mean)':26s}" + "".join(f"{str(n) + ' rank' + ('s' if n > 1 else ''):>12s}" for n in worlds)
        print(head)
        print("-" * len(head))
        steady = {n: (all_results[n][p.name]["rows"][1:] or all_results[n][p.name]["rows"]) for n in worlds}
        for k in stages + ["total", "wall"]:
            print(f"{k:26s}" + "".join(f"{statistics.fmean(r.get(k, float('nan')) for r in steady[n]) * 1000:12.1f}"
                                       for n in worlds))
        walls = {n: statistics.fmean(r["wall"] for r in steady[n]) for n in worlds}
        base = walls.get(1)
        print(f"{'fps (new frames / wall)':26s}" + "".join(f"{p.new_frames / walls[n]:12.2f}" for n in worlds))
        print(f"{'x real time':26s}" + "".join(f"{p.chunk_seconds / walls[n]:12.2f}" for n in worlds))
        if base is not None:
            print(f"{'speed-up over 1 rank':26s}" + "".join(f"{base / walls[n]:12.2f}" for n in worlds))
            print(f"{'scaling efficiency':26s}" + "".join(f"{base / walls[n] / n:12.2f}" for n in worlds))
        dit = {n: sum(statistics.fmean(r.get(f"dit_step_{i}", 0.0) for r in steady[n]) for i in range(p.sample_steps))
               for n in worlds}
        if base is not None and dit[1] > 0:
            print(f"{'DiT-only efficiency':26s}" + "".join(f"{dit[1] / dit[n] / n:12.2f}" for n in worlds))
        print(f"{'rank-0 broadcast MB/chunk':26s}" + "".join(f"{all_results[n][p.name]['bytes'] / 1e6:12.2f}"
                                                          for n in worlds))
    peaks = {n: r["_peak_gib"]["bytes"] for n, r in all_results.items() if "_peak_gib" in r}
    if peaks:
        print("\nrank-0 peak GPU memory allocated (GiB): " + ", ".join(f"{n} ranks {v:.1f}" for n, v in sorted(peaks.items())))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", default=None, help="comma list of world sizes (default 1,2,4,8; --tiny: 1,<world-size>)")
    ap.add_argument("--world-size", type=int, default=None, help="shorthand for --gpus 1,N")
    ap.add_argument("--profiles", default="quality,fast")
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "flash"])
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--tiny", action="store_true", help="tiny random family, CPU and gloo")
    ap.add_argument("--split-vae", action="store_true", help="split the VAE decode by height over the ranks too")
    args = ap.parse_args(argv)

    if args.gpus:
        worlds = [int(x) for x in args.gpus.split(",")]
    elif args.world_size:
        worlds = sorted({1, args.world_size})
    else:
        worlds = [1, 2, 4, 8]
    device_type = "cpu" if args.tiny else "cuda"
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    if args.tiny:
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print("CUDA is not available (use --tiny on a CPU)", file=sys.stderr)
        return 2
    elif max(worlds) > torch.cuda.device_count():
        print(f"asked for {max(worlds)} GPUs, {torch.cuda.device_count()} visible", file=sys.stderr)
        return 2
    from flashtalk_live.model.attention import set_default_backend

    set_default_backend(args.attention)
    profs = profiles(args.profiles.split(","), args.tiny)
    results = {}
    for n in worlds:
        results[n] = bench_world(n, args, device_type, dtype, profs)
    dev = "cpu (gloo)" if args.tiny else f"{torch.cuda.get_device_name(0)} (nccl)"
    print(f"\nFlashTalk multi-GPU engine benchmark: {dev}, dtype {str(dtype).removeprefix('torch.')}, "
          f"attention {args.attention}, {'tiny' if args.tiny else 'full-size 14B'} random weights, "
          f"VAE decode {'split over the ranks' if args.split_vae else 'on rank 0'}, "
          f"{args.chunks} chunks per profile (first = warm-up, excluded)")
    report(results, profs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
