"""GPU smoke run of the release loader (not collected by pytest), from the repo root:
`PYTHONPATH=. python tests/checkpoints/gpu_load_smoke.py [DIR]`.

Writes a release whose DiT has the full 14B width (dim 5120, 40 heads, ffn 13824) but only `--layers` blocks,
plus the full-size VAE, with random bf16 / fp32 weights, then loads each straight onto the GPU through
`release.load_*` and prints time, read throughput and peak GPU memory against the model's own size: a peak
near 1.0x the model shows the weights are never held twice.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import threading
import time
from pathlib import Path

import torch

from flashtalk_live.checkpoints import release
from flashtalk_live.checkpoints.fake import _random_state_dict


def write_wide_dit(folder: Path, layers: int, shards: int) -> int:
    from safetensors.torch import save_file

    from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT

    cfg = DiTConfig(num_layers=layers)
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanModel", **cfg.to_dict()}))
    with torch.device("meta"):
        meta = FlashTalkDiT(cfg)
    keys = list(meta.state_dict())
    per = math.ceil(len(keys) / shards)
    wm, total = {}, 0
    g = torch.Generator(device="cuda").manual_seed(0)
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {}
        for k in keys[i * per:(i + 1) * per]:
            shape = meta.state_dict()[k].shape
            part[k] = (torch.randn(shape, generator=g, device="cuda") * 0.02).to(torch.bfloat16).cpu()
            total += part[k].numel() * 2
        save_file(part, str(folder / name), metadata={"format": "pt"})
        wm.update({k: name for k in part})
        del part
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": wm}))
    return total


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(what: str, fn) -> None:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    rss0, rss_peak, done = _rss(), [0], threading.Event()

    def sample() -> None:  # host RSS includes mapped file pages that are resident
        while not done.is_set():
            rss_peak[0] = max(rss_peak[0], _rss())
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    module = fn()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    done.set()
    th.join()
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    peak = torch.cuda.max_memory_allocated() - base
    largest = max(p.numel() * p.element_size() for p in module.parameters())
    on_gpu = all(p.is_cuda for p in module.parameters())
    print(f"{what:34s} {size / 1e9:7.2f} GB in {dt:6.2f} s ({size / 1e9 / dt:5.2f} GB/s)  peak {peak / 1e9:7.2f} GB "
          f"= {peak / size:.3f} x model (largest tensor {largest / 1e6:.0f} MB)  host RSS +{(rss_peak[0] - rss0) / 1e9:.2f} GB "
          f"at most  all on GPU: {on_gpu}", flush=True)
    assert on_gpu and peak <= size + 2 * largest, "more than one copy of the weights was alive"
    del module
    torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 DiT load (needs 2x the bf16 size)")
    args = ap.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="ftl-gpu-load-"))
    w = root / "SoulX-FlashTalk-14B"
    w.mkdir(parents=True, exist_ok=True)
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    t0 = time.perf_counter()
    total = write_wide_dit(w, args.layers, args.shards)
    from flashtalk_live.model.vae import VAEConfig, WanVAE

    with torch.device("meta"):
        vae = WanVAE(VAEConfig.released())
    torch.save(_random_state_dict(vae, torch.Generator().manual_seed(1), torch.float32), w / "Wan2.1_VAE.pth")
    print(f"wrote {total / 1e9:.2f} GB DiT ({args.layers} full-width blocks, {args.shards} shards) + full VAE "
          f"in {time.perf_counter() - t0:.1f} s", flush=True)

    rep = release.verify_release(w)
    print("\n".join(line for line in rep.format().splitlines() if "dit" in line or "vae" in line))
    measure("dit bf16 -> cuda bf16", lambda: release.load_dit(w, "cuda", torch.bfloat16))
    if not args.no_fp32:
        measure("dit bf16 -> cuda fp32 (cast on GPU)", lambda: release.load_dit(w, "cuda", torch.float32))
    measure("vae fp32 .pth (mmap) -> cuda bf16", lambda: release.load_vae(w, "cuda", torch.bfloat16))
    measure("vae fp32 .pth (mmap) -> cuda fp32", lambda: release.load_vae(w, "cuda", torch.float32))
    dit = release.load_dit(w, "cuda", torch.bfloat16)
    with torch.no_grad():
        out = dit(torch.randn(1, 16, 3, 8, 8, device="cuda"), torch.tensor([500.0]),
                  torch.randn(1, 20, 4096, device="cuda"), torch.randn(1, 257, 1280, device="cuda"),
                  torch.randn(1, 20, 3, 8, 8, device="cuda"), torch.randn(1, 9, 5, 12, 768, device="cuda"))
    print(f"forward of the loaded DiT: {tuple(out.shape)} finite={bool(torch.isfinite(out).all())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
