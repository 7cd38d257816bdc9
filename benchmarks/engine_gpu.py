"""Engine benchmark: the variants of the FlashTalk engine on one GPU, full-size random weights, one table.

    python benchmarks/engine_gpu.py                                   # bf16,fp8 x wan,taehv x compile on x 3 profiles
    python benchmarks/engine_gpu.py --variants bf16,fp8 --decoders wan --compile on,off --profiles realtime,fast
    python benchmarks/engine_gpu.py --profiles quality --chunks 8 --json /tmp/engine.json
    python benchmarks/engine_gpu.py --variants fp8,fp8-fast-accum --compile on,graphs --profiles native --chunks 22
    python benchmarks/engine_gpu.py --tiny                            # tiny random family on the CPU (smoke)

One row per (profile, variant, decoder, compile): the engine's per-stage times (StageTimer: audio_features,
dit_step_i, vae_decode, colour_correction, motion_encode, host_copy) plus the drift measure the daemon runs
after each chunk, the chunk wall p50/p99/max over the steady chunks (the first --warmup-chunks, which pay
allocation, torch.compile and CUDA-graph capture, are left out), frames per second, speed against real time (chunk duration / wall p50: >= 1
keeps a room on air) and the peak GPU memory of that row (weights included). Models are rebuilt per
(variant, decoder, compile) on `meta` and materialised on the device with random values (no download, no host
copy): the pictures are noise, only speed and memory mean anything. A variant whose code is not importable
(fp8, the tiny decoder) or not supported on this device prints "n/a (not available)" and the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from flashtalk_live.checkpoints.random_weights import materialise, random_engine_models  # noqa: E402
from flashtalk_live.engine.drift import measure_drift  # noqa: E402
from flashtalk_live.engine.engine import EngineModels, FlashTalkEngine, compile_dit_blocks  # noqa: E402
from flashtalk_live.engine.host_weights import park_context_projections  # noqa: E402
from flashtalk_live.engine.profile import Profile, resolve_profile  # noqa: E402

NA = "n/a (not available)"


class NotAvailable(Exception):
    """A variant that this checkout or this device cannot run; the message says why."""


# ------------------------------------------------------------------------------------- variant table
# Each applier changes freshly built models in place or raises NotAvailable. Adding a variant is one entry.


def _bf16(models: EngineModels, ctx: dict[str, Any]) -> None:
    return None


def _fp8_fast_accum(models: EngineModels, ctx: dict[str, Any]) -> None:
    _fp8(models, ctx, fast_accum=True)


def _fp8(models: EngineModels, ctx: dict[str, Any], fast_accum: bool = False) -> None:
    try:
        from flashtalk_live.quant.fp8 import fp8_unavailable_reason, quantize_dit_
    except ImportError as e:
        raise NotAvailable(f"fp8 quantisation not in this checkout ({e})") from None
    reason = fp8_unavailable_reason(ctx["device"])
    if reason:
        raise NotAvailable(reason)
    from flashtalk_live.quant.fp8 import Fp8Plan

    plan = Fp8Plan(ctx["fp8_keep"], ctx["fp8_backend"], fast_accum=fast_accum)
    reason = fp8_unavailable_reason(ctx["device"], plan.backend)
    if reason:
        raise NotAvailable(reason)
    counts = quantize_dit_(models.dit, plan)
    ctx["notes"].append(f"fp8 {plan.backend}{' fast_accum' if fast_accum else ''} {counts}")


def _wan(models: EngineModels, ctx: dict[str, Any]) -> None:
    return None


def _taehv(models: EngineModels, ctx: dict[str, Any]) -> None:
    try:
        from flashtalk_live.model.taehv import TAEHVConfig, TAEHVDecoder
    except ImportError as e:
        raise NotAvailable(f"tiny decoder not in this checkout ({e})") from None
    if "decoder" not in {f.name for f in dataclasses.fields(EngineModels)}:
        raise NotAvailable("the engine has no tiny-decoder hook (EngineModels.decoder) in this checkout")
    from flashtalk_live.model.taehv import TinyVideoDecoder

    cfg = TAEHVConfig.tiny() if ctx["tiny"] else TAEHVConfig.taew2_1()
    dtype = torch.float16 if ctx["device"].type == "cuda" else torch.float32
    models.decoder = TinyVideoDecoder(materialise(lambda: TAEHVDecoder(cfg), ctx["device"], dtype, 5))  # type: ignore[attr-defined]


VARIANTS: dict[str, Callable[[EngineModels, dict[str, Any]], None]] = {
    "bf16": _bf16, "fp8": _fp8, "fp8-fast-accum": _fp8_fast_accum}
COMPILES = ["on", "off", "graphs"]  # graphs: compiled blocks captured as CUDA graphs (model.cuda_graphs)
DECODERS: dict[str, Callable[[EngineModels, dict[str, Any]], None]] = {"wan": _wan, "taehv": _taehv}


# ------------------------------------------------------------------------------------------ one row


def tiny_profile(name: str) -> Profile:
    """A named profile's chunking and steps at 64x32 (the tiny family runs it on a CPU in seconds)."""
    return resolve_profile(name).replace(name=f"tiny-{name}", height=64, width=32)


def run_chunks(models: EngineModels, profile: Profile, device: torch.device, dtype: torch.dtype,
               chunks: int, text_dim: int, cache_inputs: bool = True) -> list[dict[str, float]]:
    """`chunks` chunks of speech-like audio through the engine and the drift measure; per-chunk stage seconds."""
    engine = FlashTalkEngine(models, profile, device, dtype, timing=True, cache_inputs=cache_inputs)
    rng = np.random.default_rng(0)
    image = (rng.random((profile.height, profile.width, 3)) * 255).astype(np.uint8)
    context = torch.randn(24, text_dim, generator=torch.Generator().manual_seed(0)) * 0.1
    engine.start_session(image, "benchmark", context=context)
    cuda = device.type == "cuda"
    window = np.zeros(profile.window_samples, np.float32)
    spf = profile.sample_rate // profile.fps
    rows = []
    for i in range(chunks):
        t = np.arange(profile.new_frames * spf) / profile.sample_rate
        speech = (0.2 * np.sin(2 * np.pi * (150 + 20 * i) * t) * (1 + np.sin(2 * np.pi * 4 * t))).astype(np.float32)
        window = np.concatenate([window, speech])[-profile.window_samples:]
        if cuda:
            torch.cuda.synchronize()
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
        print(f"  {profile.name} chunk {i}: {timings['wall']:.3f} s", file=sys.stderr, flush=True)
    return rows


def summarise(profile: Profile, chunks: list[dict[str, float]], warmup: int = 1) -> dict[str, Any]:
    steady = chunks[warmup:] if len(chunks) > warmup else chunks
    keys = [k for k in chunks[0] if k not in ("total", "wall")]
    stages = {k: statistics.fmean(c.get(k, 0.0) for c in steady) for k in keys}
    dit = sum(v for k, v in stages.items() if k.startswith("dit_step_"))
    walls = np.array([c["wall"] for c in steady])
    p50, p99 = float(np.percentile(walls, 50)), float(np.percentile(walls, 99))
    wmax = float(walls.max())
    return {
        "stages_s": stages, "dit_s": dit, "dit_step_s": dit / profile.sample_steps,
        "vae_decode_s": stages.get("vae_decode", 0.0),
        "other_s": sum(v for k, v in stages.items() if not k.startswith("dit_step_") and k != "vae_decode"),
        "wall_p50_s": p50, "wall_p99_s": p99, "wall_max_s": wmax, "steady_chunks": int(walls.size), "fps": profile.new_frames / p50,
        "x_real_time": profile.chunk_seconds / p50, "walls_s": [c["wall"] for c in chunks],
    }


def _free(cuda: bool) -> None:
    gc.collect()
    torch._dynamo.reset()  # compiled graphs hold the previous models' weights
    if cuda:
        torch.cuda.empty_cache()


def build_models(tiny: bool, device: torch.device, dtype: torch.dtype) -> tuple[EngineModels, int]:
    """(random models, text width): kept for benchmarks/engine_multigpu.py."""
    models = random_engine_models("tiny" if tiny else "full", device, dtype)
    return models, models.text.text_dim  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------ main


def _flags(text: str, allowed: list[str] | None, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if allowed is not None:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise SystemExit(f"--{what}: unknown {bad}; known {allowed}")
    return items


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f}"


def print_table(rows: list[dict[str, Any]], header: str) -> None:
    print(f"\n{header}")
    cols = ["profile", "variant", "decoder", "compile", "DiT/step", "DiT", "VAE dec", "other",
            "wall p50", "wall p99", "wall max", "steady", "fps", "x RT", "peak GiB"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        key = [r["profile"], r["variant"], r["decoder"], r["compile"]]
        if r["status"] != "ok":
            print("| " + " | ".join(key) + f" | {r['status']} |" + " |" * (len(cols) - 5))
            continue
        s = r["summary"]
        peak = "-" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}"
        print("| " + " | ".join(key) + f" | {_ms(s['dit_step_s'])} | {_ms(s['dit_s'])} | {_ms(s['vae_decode_s'])} | "
              f"{_ms(s['other_s'])} | {_ms(s['wall_p50_s'])} | {_ms(s['wall_p99_s'])} | {_ms(s['wall_max_s'])} | "
              f"{s['steady_chunks']} | {s['fps']:.1f} | "
              f"{s['x_real_time']:.2f} | {peak} |")
    ok = [r for r in rows if r["status"] == "ok"]
    stages = list(dict.fromkeys(k for r in ok for k in r["summary"]["stages_s"]))
    if ok:
        print("\nper stage (ms, mean of the steady chunks)")
        print("| profile | variant | decoder | compile | " + " | ".join(stages) + " |")
        print("|" + "---|" * (4 + len(stages)))
        for r in ok:
            st = r["summary"]["stages_s"]
            print(f"| {r['profile']} | {r['variant']} | {r['decoder']} | {r['compile']} | "
                  + " | ".join(_ms(st.get(k)) for k in stages) + " |")
    print("\ntimes in ms (means over the steady chunks; wall = engine chunk + drift measure); "
          "x RT = chunk duration / wall p50 (>= 1 keeps real time); notes:")
    for r in rows:
        if r.get("notes") or r["status"] != "ok":
            print(f"  {r['profile']}/{r['variant']}/{r['decoder']}/{r['compile']}: "
                  + "; ".join(r.get("notes", []) + ([r["reason"]] if r.get("reason") else [])))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default=None, help=f"comma list of {list(VARIANTS)} (default all; --tiny: bf16)")
    ap.add_argument("--decoders", default=None, help=f"comma list of {list(DECODERS)} (default all; --tiny: wan)")
    ap.add_argument("--compile", default=None, help="comma list of on,off,graphs (default on; --tiny: off); graphs: "
                    "compiled in mode reduce-overhead, CUDA graphs (model.cuda_graphs)")
    ap.add_argument("--profiles", default="realtime,fast,quality", help="names or .toml files")
    ap.add_argument("--chunks", type=int, default=5, help="chunks per row; the first --warmup-chunks are not in the statistics")
    ap.add_argument("--warmup-chunks", type=int, default=1, help="chunks left out of the statistics (compile, capture)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    ap.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"], help="default bf16 (fp32 --tiny)")
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "cudnn", "flash", "sage"],
                    help="cudnn: SDPA with cuDNN attention first (model.attention)")
    ap.add_argument("--cudnn-benchmark", choices=["on", "off"], default="on", help="torch.backends.cudnn.benchmark")
    ap.add_argument("--vae-channels-last", choices=["on", "off"], default="on",
                    help="channels-last 3-D VAE convs (the daemon's default on CUDA)")
    ap.add_argument("--vae-compile", choices=["on", "off"], default="off",
                    help="torch.compile the VAE encoder and decoder (model.vae_compile)")
    ap.add_argument("--vae-pass", type=int, default=0, help="latents per VAE pass (0: a chunk in one pass; 1: the loop)")
    ap.add_argument("--input-cache", choices=["on", "off"], default="on",
                    help="context K/V, audio tokens and RoPE computed once (per session / chunk) instead of per step")
    ap.add_argument("--park", choices=["on", "off"], default="on",
                    help="the DiT's context projections in host memory between sessions (model.park_context_projections; "
                    "CUDA with the input cache on, as the daemon)")
    ap.add_argument("--fp8-keep", type=int, nargs=2, default=(2, 3), metavar=("FIRST", "LAST"),
                    help="fp8 variant: blocks left in bf16 (model.fp8_keep_bf16_blocks)")
    ap.add_argument("--fp8-backend", choices=["scaled_mm", "torchao"], default="scaled_mm", help="model.fp8_backend")
    ap.add_argument("--tiny", action="store_true", help="tiny random family, profiles at 64x32, on the CPU: smoke")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write every row (all chunk walls) as JSON")
    args = ap.parse_args(argv)

    from flashtalk_live.model.attention import set_default_backend

    variants = _flags(args.variants or ("bf16" if args.tiny else ",".join(VARIANTS)), list(VARIANTS), "variants")
    decoders = _flags(args.decoders or ("wan" if args.tiny else ",".join(DECODERS)), list(DECODERS), "decoders")
    compiles = _flags(args.compile or ("off" if args.tiny else "on"), COMPILES, "compile")
    profiles = [tiny_profile(n) if args.tiny else resolve_profile(n) for n in _flags(args.profiles, None, "profiles")]
    set_default_backend(args.attention)
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    dtype = getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        print("CUDA is not available (use --tiny on a CPU)", file=sys.stderr)
        return 2
    if args.tiny:
        torch.set_num_threads(1)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark == "on"

    rows: list[dict[str, Any]] = []
    for variant in variants:
        for decoder in decoders:
            for comp in compiles:
                base = {"variant": variant, "decoder": decoder, "compile": comp}
                ctx: dict[str, Any] = {"device": device, "tiny": args.tiny, "notes": [],
                                       "fp8_keep": tuple(args.fp8_keep), "fp8_backend": args.fp8_backend}
                models = None
                try:
                    t0 = time.perf_counter()
                    models = random_engine_models("tiny" if args.tiny else "full", device, dtype)
                    text_dim = models.text.text_dim  # type: ignore[union-attr]
                    models.vae.configure(latents_per_pass=args.vae_pass,
                                         channels_last=args.vae_channels_last == "on" and cuda,
                                         compile=args.vae_compile == "on")
                    VARIANTS[variant](models, ctx)
                    DECODERS[decoder](models, ctx)
                    if args.park == "on" and cuda and args.input_cache == "on":
                        moved = park_context_projections(models.dit)
                        torch.cuda.empty_cache()
                        ctx["notes"].append(f"context projections parked: {moved / 2**30:.2f} GiB")
                    if comp in ("on", "graphs"):
                        compile_dit_blocks(models.dit, cuda_graphs=comp == "graphs")
                    if cuda:
                        torch.cuda.synchronize()
                    ctx["notes"].append(f"built in {time.perf_counter() - t0:.1f} s")
                except NotAvailable as e:
                    rows += [{**base, "profile": p.name, "status": NA, "reason": str(e)} for p in profiles]
                    del models
                    _free(cuda)
                    continue
                print(f"{variant} / {decoder} / compile {comp}", file=sys.stderr, flush=True)
                for p in profiles:
                    row: dict[str, Any] = {**base, "profile": p.name, "notes": list(ctx["notes"]),
                                           "geometry": f"{p.width}x{p.height}", "frame_num": p.frame_num,
                                           "motion_frames": p.motion_frames, "steps": p.sample_steps,
                                           "tokens": p.seq_len}
                    try:
                        if cuda:
                            torch.cuda.reset_peak_memory_stats(device)
                        chunks = run_chunks(models, p, device, dtype, args.chunks, text_dim,
                                            cache_inputs=args.input_cache == "on")
                        row.update(status="ok", summary=summarise(p, chunks, args.warmup_chunks), chunks=chunks)
                        if cuda:
                            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                    except Exception as e:  # noqa: BLE001 - one failing row (OOM, a kernel missing) keeps the table
                        row.update(status="error", reason=f"{type(e).__name__}: {e}"[:300])
                        traceback.print_exc()
                    rows.append(row)
                    if args.json:  # after every row: a run cut short keeps what it measured
                        _write_json(args, rows, device, dtype)
                del models
                _free(cuda)

    dev_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print_table(rows, f"FlashTalk engine: {dev_name}, {str(dtype).removeprefix('torch.')}, attention {args.attention}, "
                      f"cudnn.benchmark {args.cudnn_benchmark}, VAE channels-last {args.vae_channels_last} pass {args.vae_pass} "
                      f"compile {args.vae_compile}, "
                      f"input cache {args.input_cache}, context projections parked {args.park if cuda else 'off'}, "
                      f"{'tiny' if args.tiny else 'full-size'} random weights, "
                      f"{args.chunks} chunks per row (first {args.warmup_chunks} left out), torch {torch.__version__}")
    if args.json:
        _write_json(args, rows, device, dtype)
        print(f"\nJSON: {args.json}")
    return 0


def _write_json(args: argparse.Namespace, rows: list[dict[str, Any]], device: torch.device, dtype: torch.dtype) -> None:
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    meta = {"device": dev_name, "dtype": str(dtype), "attention": args.attention, "tiny": args.tiny,
            "cudnn_benchmark": args.cudnn_benchmark, "vae_channels_last": args.vae_channels_last,
            "vae_pass": args.vae_pass, "vae_compile": args.vae_compile, "input_cache": args.input_cache,
            "torch": torch.__version__, "chunks": args.chunks, "warmup_chunks": args.warmup_chunks,
            "fp8_keep": list(args.fp8_keep), "fp8_backend": args.fp8_backend}
    Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


if __name__ == "__main__":
    raise SystemExit(main())
