"""How long the renderer's start holds Python's interpreter away from the broadcast thread, phase by phase.

    python benchmarks/interpreter_stalls.py                 # both variants, the CUDA device if there is one
    python benchmarks/interpreter_stalls.py --device cpu

A one-GPU room builds its renderer on a thread while the still renderer is on air; the broadcast thread needs the
interpreter every few milliseconds, and a stall over a second makes its pacer re-anchor (a freeze on air). Each
variant runs in a fresh process (this script with --child) at the daemon's switch interval
(`renderer.gil_switch_interval_s`, 0.5 ms). A thread there wakes every millisecond, as the broadcast does, and
records how late each wake was; the table gives, per phase of the build's start, its wall time and the longest
wake-up delay (the interpreter held by the phase). Variants: "plain" (torch imported as it is), "preloaded"
(flashtalk_live/native_preload.py first, as the renderer's build does). On a GPU, the build's parking of the
context projections follows (full-size shapes). Nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support
from support.stamp import commit  # noqa: E402

VARIANTS = ("plain", "preloaded")


def child(variant: str, device: str) -> list[dict]:
    sys.setswitchinterval(0.0005)
    delays: list[float] = []
    stop = threading.Event()

    def wake_every_ms() -> None:
        due = time.perf_counter() + 0.001
        while not stop.is_set():
            time.sleep(max(0.0, due - time.perf_counter()))
            delays.append(time.perf_counter() - due)
            due = time.perf_counter() + 0.001

    ticker = threading.Thread(target=wake_every_ms, daemon=True)
    ticker.start()
    time.sleep(0.05)
    rows: list[dict] = []

    def phase(name: str, fn: Callable[[], object]) -> None:
        first = len(delays)
        t0 = time.perf_counter()
        note = fn()
        wall = time.perf_counter() - t0
        time.sleep(0.005)  # the ticker's wake-up after the phase belongs to it
        rows.append({"phase": name, "wall_s": wall, "max_stall_s": max(delays[first:] or [0.0]),
                     "note": str(note) if isinstance(note, dict) else ""})

    if variant == "preloaded":
        from flashtalk_live.native_preload import preload_torch

        phase("preload (foreign calls)", lambda: preload_torch(device))
    phase("import torch", lambda: __import__("torch"))
    import torch

    phase("import the engine", lambda: __import__("flashtalk_live.engine.renderer"))
    dev = torch.device(device)
    if dev.type == "cuda":
        phase("torch.cuda.init", torch.cuda.init)
        phase("first tensor on the GPU", lambda: torch.zeros(1, device=dev).item())
    x = torch.randn(1, 16, 4, 32, 32, device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    conv = torch.nn.Conv3d(16, 16, 3, padding=1).to(dev, x.dtype)
    phase("first conv3d", lambda: conv(x).sum().item())
    a = torch.randn(512, 512, device=dev, dtype=x.dtype)
    phase("first matmul", lambda: (a @ a).sum().item())
    if dev.type == "cuda":
        _park_phases(phase, dev)
    stop.set()
    return rows


def _park_phases(phase: Callable[[str, Callable[[], object]], None], dev: "torch.device") -> None:
    """The room's build parks the DiT's context projections (engine/host_weights.py) while the still renderer airs:
    the 14B's shapes (40 blocks x k, v, k_img, v_img, 5120 x 5120 in fp8 with a bf16 bias, 4.2 GB), then the
    allocator's cache given back, then one session's copy-in."""
    import torch
    from torch import nn

    from flashtalk_live.engine.host_weights import HostParked, park_context_projections

    def block() -> nn.Module:
        attn = nn.Module()
        for name in ("k", "v", "k_img", "v_img"):
            lin = nn.Linear(5120, 5120, device=dev, dtype=torch.bfloat16)
            lin.weight = nn.Parameter(lin.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
            setattr(attn, name, lin)
        b = nn.Module()
        b.cross_attn = attn
        return b

    dit = nn.Module()
    dit.blocks = nn.ModuleList(block() for _ in range(40))
    torch.cuda.synchronize()
    phase("park the projections", lambda: {"bytes": park_context_projections(dit)})
    phase("empty_cache after parking", torch.cuda.empty_cache)
    parked = [m for m in dit.modules() if isinstance(m, HostParked)]

    def copy_in() -> None:
        for m in parked:
            copies = [t.to(dev, non_blocking=True) for t in m.host.values()]
            del copies
        torch.cuda.synchronize()

    phase("a session's copy-in", copy_in)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=None, help="torch device (default: cuda if nvidia-smi answers, else cpu)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = args.device or ("cuda" if subprocess.run("nvidia-smi -L", shell=True, capture_output=True).returncode == 0
                             else "cpu")
    if args.child:
        print(json.dumps(child(args.child, device)))
        return
    results = {}
    for v in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, "--child", v, "--device", device],
                             capture_output=True, text=True, check=True)
        results[v] = json.loads(out.stdout.strip().splitlines()[-1])
    gpu = subprocess.run("nvidia-smi --query-gpu=name --format=csv,noheader", shell=True, capture_output=True,
                         text=True).stdout.strip() or "no GPU"
    print(f"interpreter stalls at the renderer's start: {gpu}, device {device}, commit {commit()}, "
          f"switch interval 0.5 ms, a thread waking every 1 ms")
    print(f"{'variant':<10} {'phase':<26} {'wall s':>8} {'max stall s':>12}")
    for v, rows in results.items():
        for r in rows:
            print(f"{v:<10} {r['phase']:<26} {r['wall_s']:>8.3f} {r['max_stall_s']:>12.3f}  {r['note'][:60]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": gpu, "commit": commit(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
