"""Manual GPU check of the DiT port (not collected by pytest): fixture parity on CUDA, then the full-size 14B
DiT on random bf16 weights at the default geometry (768x448, 33 frames) with time and peak memory printed.

    PYTHONPATH=.:tests python3 tests/model/gpu_dit_smoke.py [--skip-14b | --only-14b] [--steps 3] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT

from support.tensors import errors as err

DIT = Path(__file__).resolve().parents[1] / "fixtures" / "parity" / "dit"
TFLOP_PER_FORWARD = 471.2  # flashtalk-reference.md section 8, 768x448 / 33 frames


def parity(dev):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cfg = DiTConfig.from_dict(json.loads((DIT / "config.json").read_text()))
    m = FlashTalkDiT(cfg)
    m.load_state_dict(load_file(DIT / "weights.safetensors"), strict=True)
    inp = {k: v.to(dev) for k, v in load_file(DIT / "inputs.safetensors").items()}
    for dtype in (torch.float32, torch.bfloat16):
        mm = m.to(dev, dtype)
        for case in ("case_a", "case_b"):
            c = {k: v.to(dev) for k, v in load_file(DIT / f"{case}.safetensors").items()}
            with torch.no_grad():
                out = mm(c["x"][None], c["t"], inp["context"][None], inp["clip_fea"], inp["y"][None], inp["audio"], seq_len=36)[0]
            mx, rel = err(out, c["out"])
            print(f"parity {dev} {str(dtype):15s} {case}: max_abs {mx:.3e} rel_l2 {rel:.3e}", flush=True)


@torch.inference_mode()
def attention_kernels(dev):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(1, 40, 12096, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    ref = None
    for name, be in [("default", None), ("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                     ("efficient", SDPBackend.EFFICIENT_ATTENTION)]:
        try:
            ctx = sdpa_kernel([be]) if be is not None else contextlib.nullcontext()
            with ctx:
                for _ in range(2):
                    o = F.scaled_dot_product_attention(q, k, v)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                for _ in range(5):
                    o = F.scaled_dot_product_attention(q, k, v)
                torch.cuda.synchronize()
            ms = (time.perf_counter() - t0) / 5 * 1e3
            flops = 4 * 12096 * 12096 * 5120 / (ms / 1e3) / 1e12
            ref = o if ref is None else ref
            print(f"self-attention L=12096 sdpa {name:9s}: {ms:7.2f} ms ({flops:.0f} TFLOP/s) "
                  f"max|d| vs default {(o - ref).abs().max().item():.2e}", flush=True)
        except Exception as e:  # a backend unavailable on this build
            print(f"sdpa {name}: unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})", flush=True)


@torch.no_grad()
def init_random_(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator(device="cuda").manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("modulation"):
            p.normal_(0, 0.05, generator=g)
        elif p.dim() >= 2:
            p.normal_(0, 1 / math.sqrt(p[0].numel()), generator=g)
        elif name.endswith("weight"):
            p.fill_(1.0)
        else:
            p.zero_()


@torch.inference_mode()
def full_14b(dev, steps, profile=False):
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = FlashTalkDiT(DiTConfig.flashtalk_14b()).to(torch.bfloat16)
    model = model.to_empty(device=dev).eval().requires_grad_(False)
    init_random_(model)
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated() / 2**30
    print(f"14B built on meta, materialised on {dev} in bf16: {weights:.2f} GiB weights, {time.perf_counter() - t0:.1f} s",
          flush=True)
    g = torch.Generator(device=dev).manual_seed(1)
    bf = dict(device=dev, dtype=torch.bfloat16, generator=g)
    x = torch.randn(1, 16, 9, 96, 56, **bf)
    y = torch.randn(1, 20, 9, 96, 56, **bf)
    ctx = torch.randn(1, 37, 4096, **bf) * 0.1
    clip = torch.randn(1, 257, 1280, **bf)
    audio = torch.randn(1, 33, 5, 12, 768, **bf) * 0.5
    t = torch.tensor([1000.0], device=dev)
    times = []
    for i in range(steps + 1):
        torch.cuda.synchronize()
        s = time.perf_counter()
        out = model(x, t, ctx, clip, y, audio)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - s)
        print(f"forward {i}{' (warm-up)' if i == 0 else ''}: {times[-1]:.3f} s", flush=True)
    if profile:
        from torch.profiler import ProfilerActivity, profile as prof

        with prof(activities=[ProfilerActivity.CUDA]) as pr:
            model(x, t, ctx, clip, y, audio)
            torch.cuda.synchronize()
        print(pr.key_averages().table(sort_by="cuda_time_total", row_limit=18, max_name_column_width=70), flush=True)
    best = min(times[1:]) if steps else times[0]
    print(f"14B DiT bf16 forward 768x448/33 frames (12,096 tokens): out {tuple(out.shape)} {out.dtype}, "
          f"finite={bool(torch.isfinite(out).all())}, std {out.float().std().item():.3f}", flush=True)
    print(f"  best {best:.3f} s/forward = {TFLOP_PER_FORWARD / best:.0f} TFLOP/s; 4 steps/chunk = {4 * best:.2f} s; "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
          f"(weights {weights:.2f} GiB, activations {torch.cuda.max_memory_allocated() / 2**30 - weights:.2f} GiB)",
          flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-14b", action="store_true")
    ap.add_argument("--only-14b", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print the top CUDA kernels of one forward")
    a = ap.parse_args()
    dev = "cuda"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    if not a.only_14b:
        parity(dev)
        attention_kernels(dev)
    if not a.skip_14b:
        full_14b(dev, a.steps, a.profile)


if __name__ == "__main__":
    main()
