"""Where a DiT step's time goes: FlashTalk-14B blocks under torch.profiler, their kernels summed by kind, one table.

    python benchmarks/dit_profile_gpu.py --profile realtime                  # fp8 + fast accum, compiled, 8 blocks
    python benchmarks/dit_profile_gpu.py --profile native --variant bf16 --no-compile
    python benchmarks/dit_profile_gpu.py --tiny                              # tiny blocks on the CPU (smoke)

Builds `--layers` full-width blocks (random weights, every block quantised with the fp8 variants) at the profile's
token count, runs the engine's DiT call `--warmup` times (compile, autotuning, allocation), then `--repeats` calls
under torch.profiler. Prints the wall time of a call and per block, the device time per block by kernel kind (GEMM,
attention, Triton-generated kernels: the compiled elementwise work, norms, modulation, RoPE and
the activation quantisation; copies and casts; other), each kind's share of the device time, kernels per block,
and the top kernels. Wall minus device time is host and launch time. On the CPU (`--tiny`) the same table is built
from the CPU time of torch's operators (a smoke test of the script, not a measurement of anything). Nothing here
is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support
from benchmarks.engine_gpu import tiny_profile  # noqa: E402

from flashtalk_live.checkpoints.fake import tiny_configs  # noqa: E402
from flashtalk_live.checkpoints.random_weights import materialise_dit  # noqa: E402
from flashtalk_live.engine.engine import compile_dit_blocks  # noqa: E402
from flashtalk_live.engine.profile import resolve_profile  # noqa: E402
from flashtalk_live.model.dit import DiTConfig  # noqa: E402

# (kind, test on the lower-cased kernel or operator name), first match wins. GEMMs are one kind: cuBLAS's newer
# kernels (nvjet_*) do not name their input type; with an fp8 variant every block linear is an fp8 GEMM.
KINDS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    # Inductor names a generated kernel after the operators fused into it (triton_red_fused__scaled_mm_..._amax: the
    # activation quantisation feeding a GEMM), so it is matched before any operator's name
    ("Triton (compiled elementwise, norms, quantisation)", lambda n: n.startswith("triton")),
    ("attention", lambda n: any(k in n for k in ("flash", "fmha", "attention", "sdpa", "cudnn", "_attn"))),
    ("GEMM", lambda n: any(k in n for k in ("gemm", "xmma", "cutlass", "nvjet", "scaled_mm", "aten::mm",
                                            "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul"))),
    ("copies and casts", lambda n: any(k in n for k in ("copy", "memcpy", "memset", "fill", "cast", "aten::to",
                                                        "contiguous", "clone"))),
)


def kind_of(name: str) -> str:
    n = name.lower()
    return next((k for k, test in KINDS if test(n)), "other")


def kernel_totals(events: Any) -> list[tuple[str, float, int]]:
    """The profiler's events -> (kernel name, device us, launches), the GPU's kernels only: a CPU-side launch event
    carries the kernel's name and its device time too, and counting both doubles every generated kernel."""
    by_name: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if e.device_type == DeviceType.CUDA:
            acc = by_name[e.name]
            acc[0] += e.time_range.elapsed_us()
            acc[1] += 1
    return [(name, us, int(n)) for name, (us, n) in by_name.items() if us > 0]


def summarise(events: list[tuple[str, float, int]], calls: int, layers: int) -> dict[str, Any]:
    """(name, self time us, count) of every kernel or operator -> per-block ms and counts by kind, top kernels."""
    by_kind: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for name, us, count in events:
        k = by_kind[kind_of(name)]
        k[0] += us
        k[1] += count
    per = calls * layers
    total = sum(v[0] for v in by_kind.values())
    kinds = sorted(((k, v[0] / per / 1000, v[1] / per, v[0] / total if total else 0.0) for k, v in by_kind.items()),
                   key=lambda r: -r[1])
    top = sorted(events, key=lambda e: -e[1])[:12]
    return {"kinds": kinds, "device_ms_per_block": total / per / 1000,
            "top": [(n, us / per / 1000, c / per, kind_of(n)) for n, us, c in top]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="realtime", help="a named profile: its token count")
    ap.add_argument("--variant", choices=["bf16", "fp8", "fp8-fast-accum"], default="fp8-fast-accum")
    ap.add_argument("--no-compile", action="store_true", help="eager blocks (default: compiled, as shipped)")
    ap.add_argument("--layers", type=int, default=8, help="blocks built and run (the model has 40)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="tiny blocks on the CPU (smoke)")
    args = ap.parse_args(argv)

    if args.tiny:
        dev, dtype = torch.device("cpu"), torch.float32
        base = tiny_configs()[0]
        p = tiny_profile(args.profile)
        variant, compiled = "float32", False  # the fp8 kernels and Inductor's GPU code are the GPU's business
    else:
        if not torch.cuda.is_available():
            print("needs a CUDA GPU (or --tiny)", file=sys.stderr)
            return 2
        dev, dtype = torch.device("cuda"), torch.bfloat16
        base = DiTConfig.flashtalk_14b()
        p = resolve_profile(args.profile)
        variant, compiled = args.variant, not args.no_compile
    cfg = dataclasses.replace(base, num_layers=args.layers)
    fp8 = None
    if variant.startswith("fp8"):
        from flashtalk_live.quant.fp8 import Fp8Plan

        fp8 = Fp8Plan(keep_bf16_blocks=(0, 0), fast_accum=variant == "fp8-fast-accum")
    dit = materialise_dit(cfg, dev, dtype, 0, fp8=fp8)
    if compiled:
        compile_dit_blocks(dit)
    h, w = p.latent_hw
    t_lat = p.latent_frames
    g = torch.Generator(dev).manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=dev, dtype=dtype)

    context, clip_fea, y = rnd(24, cfg.text_dim) * 0.1, rnd(1, 257, cfg.clip_dim), rnd(cfg.in_dim - 16, t_lat, h, w)
    audio = rnd(1, p.frame_num, cfg.audio_window, cfg.audio_layers, cfg.audio_channels) * 0.1
    x = rnd(16, t_lat, h, w)
    t = torch.tensor([900.0], device=dev)

    def call() -> torch.Tensor:  # the engine's DiT call (engine/engine.py)
        return dit(x[None], t, context[None], clip_fea, y[None], audio)[0]

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    walls = []
    with torch.no_grad():
        for _ in range(args.warmup):
            call()
        sync()
        for _ in range(args.repeats):  # unprofiled: the profiler adds its own host time
            t0 = time.perf_counter()
            call()
            sync()
            walls.append(time.perf_counter() - t0)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(args.repeats):
                call()
            sync()

    events: list[tuple[str, float, int]] = []
    if dev.type == "cuda":
        events = kernel_totals(prof.events())
    else:
        events = [(e.key, float(e.self_cpu_time_total), int(e.count)) for e in prof.key_averages()
                  if e.key.startswith("aten::") and e.self_cpu_time_total > 0]
    s = summarise(events, args.repeats, args.layers)
    wall = statistics.median(walls)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (tiny: a smoke test)"
    print(f"\nDiT step by kernel kind: {where}, torch {torch.__version__}, profile {p.name} ({p.seq_len} tokens), "
          f"{args.layers} blocks of {cfg.dim} wide, {variant}, {'compiled' if compiled else 'eager'}, "
          f"{args.repeats} profiled calls after {args.warmup} warm-ups")
    print(f"wall per call {wall * 1000:.1f} ms, per block {wall * 1000 / args.layers:.2f} ms; "
          f"{'device' if dev.type == 'cuda' else 'operator'} time per block {s['device_ms_per_block']:.2f} ms "
          f"(wall - that: host and launch time, embeddings and head)")
    print("| kind | ms per block | share | kernels per block |\n|---|---|---|---|")
    for k, ms, n, share in s["kinds"]:
        print(f"| {k} | {ms:.3f} | {share:.0%} | {n:.1f} |")
    print("\ntop kernels\n| kernel | kind | ms per block | per block |\n|---|---|---|---|")
    for name, ms, n, k in s["top"]:
        print(f"| {name[:90]} | {k} | {ms:.3f} | {n:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
