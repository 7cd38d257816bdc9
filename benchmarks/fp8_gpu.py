"""fp8 DiT linears on the GPU: one full-size block timed bf16 vs fp8 (torch._scaled_mm) vs fp8 (torchao), and the
deviation fp8 causes in the whole 14B DiT's output (random bf16 weights, one forward), and in the frames of a
two-chunk engine run (the whole random engine family, same audio, noise and session, bf16 then fp8). Three tables.

    python benchmarks/fp8_gpu.py                   # cuda, fast profile geometry (9,152 tokens), blocks compiled
    python benchmarks/fp8_gpu.py --tokens-grid 9 56 28 --no-compile
    python benchmarks/fp8_gpu.py --skip-full-dit   # block timings only (no 28 GB DiT)
    python benchmarks/fp8_gpu.py --only-chunks --chunk-profile realtime   # the two-chunk run only
    python benchmarks/fp8_gpu.py --tiny            # the tiny DiT on the CPU (emulated fp8): checks the script

Weights: benchmarks/engine_gpu.py's `materialise` (N(0, 1/fan_in) matrices, built on meta, filled on the device).
Block time: median over --iters calls after --warmup calls, CUDA events. Deviation: relative L2 of the DiT's
float32 output, fp8 vs bf16, same inputs; first with the default plan (first 2 / last 3 blocks kept in bf16),
then with every block in fp8. Random weights say nothing about visual quality on the released weights.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from benchmarks.engine_gpu import materialise  # noqa: E402

from flashtalk_live.model.dit import DiTBlock, DiTConfig, DiTEmbeddings, FlashTalkDiT  # noqa: E402
from flashtalk_live.quant.fp8 import (  # noqa: E402
    Fp8Plan, fp8_unavailable_reason, quantize_block_, quantize_dit_, quantized_linears,
)


def embeddings(cfg: DiTConfig, grid: tuple[int, int, int], device, dtype, seed: int = 0) -> DiTEmbeddings:
    """Random block inputs of the right shapes and scales for `grid` (latent frames, patch rows, patch cols)."""
    g = torch.Generator(device).manual_seed(seed)
    n = grid[0] * grid[1] * grid[2]

    def rnd(*shape, scale=1.0, dt=dtype):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dt)

    return DiTEmbeddings(
        tokens=rnd(1, n, cfg.dim), grid=grid, seq_len=n, e=rnd(1, cfg.dim, dt=torch.float32),
        e0=rnd(1, 6, cfg.dim, scale=0.1, dt=torch.float32), context=rnd(1, 257 + cfg.text_len, cfg.dim), n_img=257,
        audio=rnd(1, grid[0], cfg.context_tokens, cfg.output_dim), head_dim=cfg.head_dim, rope_theta=cfg.rope_theta,
    )


def time_block(block, x, inp, device, warmup: int, iters: int) -> float:
    """Median milliseconds of one block call."""
    with torch.no_grad():
        for _ in range(warmup):
            block(x, inp)
        times = []
        for _ in range(iters):
            if device.type == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                block(x, inp)
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            else:
                t = time.perf_counter()
                block(x, inp)
                times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


def block_table(cfg, grid, device, dtype, args) -> list[tuple[str, str, str]]:
    emb = embeddings(cfg, grid, device, dtype)
    inp = emb.block_inputs()
    pristine = materialise(lambda: DiTBlock(cfg), device, dtype, 1)  # never compiled: each variant is a copy
    with torch.no_grad():
        want = pristine(emb.tokens, inp).float()
    rows = []
    for name in ("bf16", "fp8 scaled_mm", "fp8 scaled_mm fast_accum", "fp8 torchao"):
        backend = None if name == "bf16" else name.split()[1]
        fast_accum = name.endswith("fast_accum")
        reason = None
        if backend and (device.type == "cuda" or backend == "torchao"):
            reason = fp8_unavailable_reason(device, backend)
        if reason:
            rows.append((name, "unavailable", reason))
            continue
        block = copy.deepcopy(pristine)
        try:
            if backend:
                quantize_block_(block, backend, fast_accum=fast_accum)
            if args.compile:
                torch._dynamo.reset()
                block.compile(dynamic=False)
            ms = time_block(block, emb.tokens, inp, device, args.warmup, args.iters)
            with torch.no_grad():
                dev = rel_l2(block(emb.tokens, inp).float(), want)
        except Exception as e:  # noqa: BLE001 - a backend that fails here is a row of the table, not the end
            rows.append((name, "failed", f"{type(e).__name__}: {str(e)[:200]}"))
            continue
        finally:
            del block
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append((name, f"{ms:.2f} ms", f"{dev:.2e}"))
    return rows


def full_dit_table(cfg, grid, device, dtype, args) -> list[tuple[str, str, str]]:
    dit = materialise(lambda: FlashTalkDiT(cfg), device, dtype, 2)
    emb = embeddings(cfg, grid, device, dtype, seed=1)
    inp = emb.block_inputs()

    def forward() -> torch.Tensor:
        with torch.no_grad():
            return dit.unpatchify(dit.head(dit.run_blocks(emb.tokens, inp), emb.e), emb.grid).float()

    want = forward()
    rows = []
    plan = Fp8Plan(tuple(args.keep), args.full_backend)
    counts = quantize_dit_(dit, plan)
    rows.append((f"fp8, first {args.keep[0]} / last {args.keep[1]} blocks bf16", f"{counts['linears']} linears",
                 f"{rel_l2(forward(), want):.2e}"))
    rest = [i for i in range(len(dit.blocks)) if i not in plan.blocks(len(dit.blocks))]
    n = sum(quantize_block_(dit.blocks[i], args.full_backend) for i in rest)
    rows.append(("fp8, every block", f"{counts['linears'] + n} linears", f"{rel_l2(forward(), want):.2e}"))
    if device.type == "cuda":
        rows.append(("(peak GPU memory)", f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB", ""))
    return rows


def two_chunk_table(kind: str, profile, device, dtype, args) -> list[tuple[str, str, str]]:
    """Two chunks of speech-like audio through the engine, bf16 DiT, then the same session with the DiT in fp8.

    Eager (not compiled): the deviation is the quantisation's, not a compiler's. Rows: per chunk, rel L2 of the
    final latent, of the decoded video in [-1, 1] and of the uint8 frames, fp8 against bf16.
    """
    import numpy as np

    from flashtalk_live.checkpoints.random_weights import random_engine_models
    from flashtalk_live.engine.engine import FlashTalkEngine

    models = random_engine_models(kind, device, dtype)
    engine = FlashTalkEngine(models, profile, device, dtype)
    rng = np.random.default_rng(0)
    image = (rng.random((profile.height, profile.width, 3)) * 255).astype(np.uint8)
    session = engine.start_session(image, "benchmark")
    spf = profile.sample_rate // profile.fps
    windows, window = [], np.zeros(profile.window_samples, np.float32)
    for i in range(2):
        t = np.arange(profile.new_frames * spf) / profile.sample_rate
        speech = (0.2 * np.sin(2 * np.pi * (150 + 20 * i) * t) * (1 + np.sin(2 * np.pi * 4 * t))).astype(np.float32)
        window = np.concatenate([window, speech])[-profile.window_samples:]
        windows.append(window)

    def run() -> list[dict[str, torch.Tensor]]:
        engine.use_session(session)  # same motion context and noise stream from chunk 0
        outs = []
        for w in windows:
            trace: dict = {}
            frames = engine.generate(engine.audio_features(w), trace=trace).frames
            outs.append({"latent": trace["latent_final"].float().cpu(), "video": trace["colour_corrected"].float().cpu(),
                         "frames": torch.from_numpy(frames).float()})
        return outs

    want = run()
    plan = Fp8Plan(tuple(args.keep), args.full_backend)
    quantize_dit_(models.dit, plan)
    got = run()
    rows = []
    for i, (g, w) in enumerate(zip(got, want)):
        rows.append((f"chunk {i}", f"{rel_l2(g['latent'], w['latent']):.2e} / {rel_l2(g['video'], w['video']):.2e}",
                     f"{rel_l2(g['frames'], w['frames']):.2e}"))
    del models, engine
    return rows


def table(title: str, head: tuple[str, str, str], rows) -> None:
    print(f"\n{title}\n| {' | '.join(head)} |\n|---|---|---|")
    for r in rows:
        print(f"| {' | '.join(r)} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny DiT on the CPU (emulated fp8)")
    ap.add_argument("--tokens-grid", type=int, nargs=3, default=(8, 44, 26), metavar=("T", "H", "W"),
                    help="latent frames x patch rows x patch cols (default: fast profile 704x416, 9,152 tokens)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--keep", type=int, nargs=2, default=(2, 3), metavar=("FIRST", "LAST"))
    ap.add_argument("--full-backend", choices=["scaled_mm", "torchao"], default="scaled_mm")
    ap.add_argument("--skip-full-dit", action="store_true")
    ap.add_argument("--only-chunks", action="store_true", help="only the two-chunk engine run")
    ap.add_argument("--skip-chunks", action="store_true", help="no two-chunk engine run")
    ap.add_argument("--chunk-profile", default="realtime", help="profile of the two-chunk run")
    args = ap.parse_args(argv)
    if args.tiny:
        from flashtalk_live.checkpoints.fake import tiny_configs

        cfg, device, dtype = tiny_configs()[0], torch.device("cpu"), torch.bfloat16
        args.tokens_grid, args.warmup, args.iters, args.keep = (2, 4, 4), 1, 3, (0, 1)
        args.compile = False
    else:
        cfg, device, dtype = DiTConfig.flashtalk_14b(), torch.device("cuda"), torch.bfloat16
        torch.backends.cuda.matmul.allow_tf32 = True
        print(f"device: {torch.cuda.get_device_name(device)} (capability "
              f"{'.'.join(map(str, torch.cuda.get_device_capability(device)))}), torch {torch.__version__}")
    grid = tuple(args.tokens_grid)
    n_tokens = grid[0] * grid[1] * grid[2]
    with torch.device("meta"):
        n_lin = len(quantized_linears(DiTBlock(cfg)))
    if not args.only_chunks:
        table(f"one DiT block, dim {cfg.dim}, {n_tokens:,} tokens, {n_lin} linears in fp8, "
              f"{'compiled' if args.compile else 'eager'}", ("variant", "time (median)", "rel L2 vs bf16 block"),
              block_table(cfg, grid, device, dtype, args))
    if not args.skip_full_dit and not args.only_chunks:
        table(f"whole DiT ({cfg.num_layers} blocks), {n_tokens:,} tokens, one forward, random weights",
              ("variant", "quantised", "rel L2 of the output vs bf16"), full_dit_table(cfg, grid, device, dtype, args))
    if args.skip_chunks:
        return 0
    from benchmarks.engine_gpu import tiny_profile

    from flashtalk_live.engine.profile import resolve_profile

    profile = tiny_profile(args.chunk_profile) if args.tiny else resolve_profile(args.chunk_profile)
    table(f"two-chunk engine run, profile {profile.name} {profile.width}x{profile.height}, "
          f"{'tiny' if args.tiny else 'full-size'} random weights, eager, fp8 first {args.keep[0]} / last "
          f"{args.keep[1]} blocks bf16", ("chunk", "rel L2 latent / video vs bf16", "rel L2 uint8 frames"),
          two_chunk_table("tiny" if args.tiny else "full", profile, device, dtype, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
