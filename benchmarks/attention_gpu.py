"""Attention kernels on one GPU at the DiT's self-attention shapes: time and deviation, one table.

    python benchmarks/attention_gpu.py                       # realtime, fast, quality token counts, 40 heads x 128
    python benchmarks/attention_gpu.py --tokens 7680 --iters 20

Rows: torch SDPA in its default order, each SDPA kernel forced (flash, cuDNN, memory-efficient), the
model.attention = "cudnn" and "flash" backends (flash: flash-attn 3 or 2, or the forward-only wheel fa3-fwd), and
SageAttention (`sageattn`, NHD layout) when that package is installed. Time: median of --iters calls after --warmup,
CUDA events, eager. Deviation: relative L2 against SDPA's default kernel on the same bf16 inputs (random N(0,1)
q/k/v: a stress case, not the model's activations). A kernel that cannot run prints why.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support

from flashtalk_live.model.attention import attention  # noqa: E402

PROFILE_TOKENS = {"realtime": 7680, "fast": 9152, "quality": 12096}


def timed(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, nargs="*", default=list(PROFILE_TOKENS.values()))
    ap.add_argument("--heads", type=int, default=40)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("needs CUDA", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(dev)}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
          f"bf16, {args.heads} heads x {args.head_dim}")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    print("| tokens | kernel | ms | TFLOP/s | rel L2 vs SDPA default |\n|---|---|---|---|---|")
    for n in args.tokens:
        g = torch.Generator(dev).manual_seed(n)
        q, k, v = (torch.randn(1, n, args.heads, args.head_dim, generator=g, device=dev, dtype=torch.bfloat16)
                   for _ in range(3))
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        ref = sdpa(qh, kh, vh).transpose(1, 2).float()
        flops = 4 * n * n * args.heads * args.head_dim
        kernels = {"sdpa default": lambda: sdpa(qh, kh, vh).transpose(1, 2)}
        for name, b in (("sdpa flash", SDPBackend.FLASH_ATTENTION), ("sdpa cudnn", SDPBackend.CUDNN_ATTENTION),
                        ("sdpa efficient", SDPBackend.EFFICIENT_ATTENTION)):
            kernels[name] = (lambda b=b: _forced(b, qh, kh, vh))
        kernels["model.attention=cudnn"] = lambda: attention(q, k, v, backend="cudnn")
        kernels["model.attention=flash"] = lambda: attention(q, k, v, backend="flash")  # a row saying why if absent
        try:
            from sageattention import sageattn
            kernels["sageattention"] = lambda: sageattn(q, k, v, tensor_layout="NHD", is_causal=False)
        except ImportError:
            pass
        for name, fn in kernels.items():
            try:
                ms = timed(fn, args.warmup, args.iters)
                out = fn().float()
                dev_l2 = ((out - ref).norm() / ref.norm()).item()
                print(f"| {n} | {name} | {ms:.2f} | {flops / ms / 1e9:.0f} | {dev_l2:.2e} |")
            except Exception as e:  # noqa: BLE001 - a kernel that cannot run is a row, not the end
                print(f"| {n} | {name} | n/a | | {type(e).__name__}: {str(e)[:120]} |")
    return 0


def _forced(b: SDPBackend, q, k, v):
    with sdpa_kernel(b):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)


if __name__ == "__main__":
    raise SystemExit(main())
