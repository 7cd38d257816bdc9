"""Critical-path check on one GPU: the DiT step with the input cache on and off, and a chunk without host syncs.

    python benchmarks/critical_path_gpu.py [--layers 40] [--profile fast] [--compile] [--repeats 6]

Full-width FlashTalk-14B blocks (random bf16 weights, `--layers` of them) at the profile's geometry. Prints a table:
DiT step time with `set_input_cache(False)` (context K/V, audio tokens and RoPE every step) and `True` (once per
session / chunk / geometry), whether the outputs are bitwise equal, whether a whole chunk's sampling steps run
under `torch.cuda.set_sync_debug_mode("error")`, and whether the side-stream frame copy returns the right bytes.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support
from benchmarks.engine_gpu import materialise  # noqa: E402

from flashtalk_live.engine.engine import HostCopy, compile_dit_blocks  # noqa: E402
from flashtalk_live.engine.profile import resolve_profile  # noqa: E402
from flashtalk_live.engine.sampler import NoiseSource, make_timesteps, sample  # noqa: E402
from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=40)
    ap.add_argument("--profile", default="fast")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--repeats", type=int, default=6)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    dev, dtype = torch.device("cuda"), torch.bfloat16
    torch.backends.cuda.matmul.allow_tf32 = True
    cfg = dataclasses.replace(DiTConfig.flashtalk_14b(), num_layers=args.layers)
    dit = materialise(lambda: FlashTalkDiT(cfg), dev, dtype, 0)
    if args.compile:
        compile_dit_blocks(dit)
    p = resolve_profile(args.profile)
    h, w = p.latent_hw
    t_lat = p.latent_frames
    g = torch.Generator(dev).manual_seed(0)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=dev, dtype=dtype)

    context, clip_fea, y = rnd(24, cfg.text_dim) * 0.1, rnd(1, 257, cfg.clip_dim), rnd(20, t_lat, h, w)
    audio = rnd(1, p.frame_num, cfg.audio_window, cfg.audio_layers, cfg.audio_channels) * 0.1
    x = rnd(16, t_lat, h, w)
    t = torch.tensor([900.0], device=dev)

    def step() -> torch.Tensor:  # the engine's call
        return dit(x[None], t, context[None], clip_fea, y[None], audio)[0]

    rows = {}
    outs = {}
    with torch.no_grad():
        for cached in (False, True):
            dit.set_input_cache(cached)
            for _ in range(2):
                step()
            times = []
            for _ in range(args.repeats):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                outs[cached] = step()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            rows[cached] = statistics.median(times)

        # One chunk's sampling steps with the cache on, after a first chunk (tables built), under sync errors.
        dit.set_input_cache(True)
        timesteps = make_timesteps(p.sample_steps, p.shift).to(dev)
        noise = NoiseSource(p.seed, dev)

        def chunk() -> torch.Tensor:
            return sample(lambda lat, tt, i: dit(lat[None], tt, context[None], clip_fea, y[None], audio)[0],
                          x[:, :1].float(), tuple(x.shape), timesteps, noise, noise_dtype=dtype)

        chunk()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            chunk()
            sync = "none"
        except RuntimeError as e:
            sync = f"SYNC: {str(e).splitlines()[0][:100]}"
        finally:
            torch.cuda.set_sync_debug_mode(0)

        big = rnd(4096, 4096)
        want = (big @ big).to(torch.uint8).cpu()
        u8 = (big @ big).to(torch.uint8)
        copy = HostCopy(u8)
        for _ in range(20):  # queued after the copy, on the main stream
            big = big @ big * 1e-2
        copy_ok = torch.equal(copy.wait(), want)

    print(f"\nFlashTalk DiT critical path: {torch.cuda.get_device_name(dev)}, {args.layers} full-width blocks, bf16, "
          f"profile {p.name} ({p.seq_len} tokens), compile {'on' if args.compile else 'off'}")
    print(f"{'input cache':14s}{'DiT step ms':>14s}")
    for cached in (False, True):
        print(f"{'on' if cached else 'off':14s}{rows[cached]:14.1f}")
    print(f"saved per step: {rows[False] - rows[True]:.1f} ms; outputs bitwise equal: {torch.equal(outs[False], outs[True])}")
    print(f"host syncs in a chunk's sampling steps: {sync}; side-stream frame copy correct: {copy_ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
