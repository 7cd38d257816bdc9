"""Host memory of the DiT's parked context projections: one pinned block per tensor against one registered slab.

    python benchmarks/host_park_gpu.py            # the 14B's shapes: 40 blocks x 4 projections of 5120 x 5120
    python benchmarks/host_park_gpu.py --blocks 8 # fewer blocks (a quicker look)

The tensors are what `model.park_context_projections` moves for the shipped fp8 plan: fp8 e4m3 weights with float32
scales and biases, the first 2 and last 3 blocks in bf16 (weight and bias). Rows:
- `pin_memory per tensor`: `torch.empty_like(t, pin_memory=True).copy_(t)` for each tensor (the parking before the
  slab): torch's pinned allocator rounds each block up to a power of two;
- `one slab, cudaHostRegister`: `host_weights.park_layers` (the parking now).
Per row, in a fresh process each (so one row's memory is not the other's): the parked bytes, the host memory the
process gained (VmRSS) and the system lost (MemAvailable), the time to park, and one session start's copies of
every tensor back to the GPU (non-blocking, then synchronised; best of 3). Nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

DIM = 5120
LAYOUTS = ("pin_memory per tensor", "one slab, cudaHostRegister")


def meminfo(key: str, path: str = "/proc/meminfo") -> int:
    """A /proc field in bytes (kB there)."""
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def one_row(layout: str, blocks: int) -> dict:
    import torch
    from torch import nn

    from flashtalk_live.engine.host_weights import CONTEXT_PROJECTIONS, park_layers

    dev = torch.device("cuda")
    layers = []
    for b in range(blocks):
        bf16 = b < 2 or b >= blocks - 3
        for _ in CONTEXT_PROJECTIONS:
            m = nn.Module()
            if bf16:
                m.register_buffer("weight", torch.randn(DIM, DIM, device=dev, dtype=torch.bfloat16))
                m.register_buffer("bias", torch.randn(DIM, device=dev, dtype=torch.bfloat16))
            else:
                m.register_buffer("weight", torch.randn(DIM, DIM, device=dev).to(torch.float8_e4m3fn))
                m.register_buffer("scale", torch.rand(DIM, device=dev))
                m.register_buffer("bias", torch.randn(DIM, device=dev))
            layers.append(m)
    torch.cuda.synchronize()
    tensors = [t for m in layers for t in m.buffers()]
    nbytes = sum(t.numel() * t.element_size() for t in tensors)
    rss0, avail0 = meminfo("VmRSS", "/proc/self/status"), meminfo("MemAvailable")
    t0 = time.perf_counter()
    if layout == LAYOUTS[0]:
        host = [torch.empty_like(t, device="cpu", pin_memory=True).copy_(t) for t in tensors]
    else:
        host = [t for p in park_layers(layers, pin=True) for t in p.host.values()]
    park_s = time.perf_counter() - t0
    rss1, avail1 = meminfo("VmRSS", "/proc/self/status"), meminfo("MemAvailable")
    pinned = all(h.is_pinned() for h in host)  # what torch sees: a non-blocking copy is asynchronous only then
    copies = []
    for _ in range(3):
        t0 = time.perf_counter()
        back = [h.to(dev, non_blocking=True) for h in host]
        torch.cuda.synchronize()
        copies.append(time.perf_counter() - t0)
        del back
    return {"layout": layout, "pinned": pinned, "tensors": len(tensors), "parked_gb": nbytes / 1e9,
            "rss_gain_gb": (rss1 - rss0) / 1e9, "available_lost_gb": (avail0 - avail1) / 1e9, "park_s": park_s, "copy_in_s": min(copies),
            "copy_gb_s": nbytes / 1e9 / min(copies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=40)
    ap.add_argument("--row", choices=LAYOUTS, help=argparse.SUPPRESS)  # one row, in this process
    args = ap.parse_args()
    if args.row:
        print(json.dumps(one_row(args.row, args.blocks)))
        return
    import torch

    from support.stamp import commit

    rows = []
    for layout in LAYOUTS:
        out = subprocess.run([sys.executable, __file__, "--blocks", str(args.blocks), "--row", layout],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"\nparked context projections: {args.blocks} blocks x 4, {torch.cuda.get_device_name()}, commit {commit()}")
    print("| layout | page-locked | tensors | parked GB | process RSS gained GB | MemAvailable lost GB | park s "
          "| copy in s | GB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['pinned']} | {r['tensors']} | {r['parked_gb']:.2f} | {r['rss_gain_gb']:.2f} | "
              f"{r['available_lost_gb']:.2f} | {r['park_s']:.2f} | {r['copy_in_s']:.3f} | {r['copy_gb_s']:.1f} |")


if __name__ == "__main__":
    main()
