"""Start-up of the FlashTalk renderer on one GPU: load, "auto" or a named profile, warm-up; cold and warm cache.

    python benchmarks/startup_gpu.py                                  # auto, then native: each cold, then warm
    python benchmarks/startup_gpu.py --profiles auto --runs cold,warm,warm --chunks 20
    python benchmarks/startup_gpu.py --tiny --profiles auto --chunks 2   # tiny random family on the CPU (smoke)
    python benchmarks/startup_gpu.py --tiny --profiles auto --chunks 2 --set model.compile=true   # ... compiled:
        # the warm run reuses auto's record (the CPU's timings choose; the numbers mean nothing)
    python benchmarks/startup_gpu.py --profiles native --runs cold --release /data/random-release
        # the real loader: full-size random shards written to disk once (~42 GB), streamed and fp8-quantised

Each run is a fresh process (this script with --child), so torch's in-memory caches start empty: what a warm run
shares with the run before it is only the compile cache folder (`model.compile_cache_dir`, one per --profiles
entry), as after a restart of the daemon; a cold run starts from an empty folder. That folder also holds auto's
remembered measurements (`auto-profile.json`, engine/auto_memory.py): a warm auto run finds the record the run
before it wrote and skips the eager trials while the remembered winner still fits; the table's "auto eager
trials" column says which trials a run ran, or "none (remembered, <age>)".

The child builds the renderer exactly as the daemon does (`build_flashtalk_renderer` from settings: full-size
random weights through `model.random_weights = "full"`, fp8 quantised block by block, TAEHV, DiT compiled), warms
it a second time on another thread (the supervisor's render thread), then times --chunks silent chunks through the render path. Reported per run: seconds from the
child's start to the renderer ready (the daemon's load time; its encoder, outputs and still renderer are not
part of it and were on air all along), the profile chosen, auto's eager and compiled p90s, the GPU load peak
(up to the last warm-up) and the steady peak (the timed chunks), chunk p50/p99/max. The portrait is a generated
one (the weights are random: only time and memory mean anything). Nothing here is a pass/fail threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

T0 = time.perf_counter()  # before torch is imported: the child's start-up includes its imports

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script: this checkout's package, then tests/support


def child(args: argparse.Namespace) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    from flashtalk_live.checkpoints.release import FLASHTALK_DIR, WAV2VEC_DIR
    from flashtalk_live.engine import renderer as renderer_mod
    from flashtalk_live.engine.renderer import FlashTalkConfig, build_flashtalk_renderer, wall_timer
    from flashtalk_live.settings import BENCHMARK_ENV
    from flashtalk_live.config import load_settings

    os.environ[BENCHMARK_ENV] = "1"
    rng = np.random.default_rng(0)
    portrait = (rng.random((768, 448, 3)) * 255).astype(np.uint8)
    renderer_mod.default_portrait = lambda: portrait  # no image decoding needed on a bare GPU box
    tiny = args.tiny
    weights = ([f'model.weights_dir="{Path(args.release) / FLASHTALK_DIR}"',
                f'model.wav2vec_dir="{Path(args.release) / WAV2VEC_DIR}"']  # the real loader, shards streamed
               if args.release else [f'model.random_weights="{"tiny" if tiny else "full"}"'])
    over = ['renderer.kind="flashtalk"', *weights,
            f'model.profile="{args.profile}"', f'model.device="{"cpu" if tiny else "cuda"}"',
            f'model.dtype="{"float32" if tiny else "bfloat16"}"', f"model.compile={str(not tiny).lower()}",
            f'model.quantize="{"none" if tiny else "fp8"}"', f'model.decoder="{args.decoder}"',
            f"model.fp8_fast_accum={str(args.fast_accum).lower()}",
            f'model.compile_cache_dir="{args.cache}"', f'state_dir="{args.state}"',
            "video.width=448", "video.height=768", "video.chunk_frames=28"] + list(args.set or [])
    if tiny:
        over += ['model.auto_candidates=["' + '","'.join(f"{args.state}/tiny_{n}.toml" for n in ("a", "b")) + '"]']
        for n, h in (("a", 64), ("b", 48)):
            Path(args.state, f"tiny_{n}.toml").write_text(f'base = "fast"\nheight = {h}\nwidth = 32\n')
    s = load_settings(None, over, environ={BENCHMARK_ENV: "1"})
    t_build = time.perf_counter()
    r = build_flashtalk_renderer(FlashTalkConfig.from_settings(s))
    built = time.perf_counter()
    pool = ThreadPoolExecutor(1, thread_name_prefix="engine")
    pool.submit(r.warm_up).result()  # the supervisor warms again on the thread that renders
    ready = time.perf_counter()
    seconds = pool.submit(r.time_chunks, args.chunks, lambda run: wall_timer(r.profile, run)).result()
    cuda = torch.cuda.is_available() and not tiny
    d = r.drift()
    a = np.asarray(seconds)
    return {
        "profile_setting": args.profile, "profile": r.profile.name, "cache": args.cache,
        "imports_s": t_build - T0, "build_s": built - t_build, "second_warm_up_s": ready - built,
        "ready_s": ready - T0,
        "auto": d["auto"], "load_peak_gib": None if d["gpu_load_peak_bytes"] is None else d["gpu_load_peak_bytes"] / 2**30,
        "steady_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "chunks": len(seconds), "chunk_p50_s": float(np.percentile(a, 50)), "chunk_p99_s": float(np.percentile(a, 99)),
        "chunk_max_s": float(a.max()), "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__, "weights": args.release or "random (model.random_weights)",
        "host_peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def eager_trials(auto: dict[str, Any]) -> str:
    """What auto timed eager at this start: the profiles, and whether the other eager timings were remembered."""
    if not auto or auto.get("compiled_ratio") is None:  # a named profile, or auto without compile
        return "-"
    ran = ", ".join(auto.get("eager_trials") or []) or "none"
    if not auto.get("remembered"):
        return ran
    age = float(auto.get("remembered_age_s") or 0)
    return f"{ran} (remembered, {age / 60:.0f} min old)" if age >= 60 else f"{ran} (remembered, {age:.0f} s old)"


def write_release(root: Path, tiny: bool) -> None:
    """A release of random weights on disk in the released layout (full size: about 42 GB; the benchmark's stand-in
    for the real files), with a random taew2_1 decoder under taehv/, unless `root` already holds one."""
    import torch
    from safetensors.torch import save_file

    from flashtalk_live.checkpoints.fake import write_fake_release
    from flashtalk_live.checkpoints.release import FLASHTALK_DIR
    from flashtalk_live.model.clip import VIT_H_14
    from flashtalk_live.model.dit import DiTConfig
    from flashtalk_live.model.t5 import UMT5_XXL
    from flashtalk_live.model.taehv import TAEHVConfig, TAEHVDecoder
    from flashtalk_live.model.vae import VAEConfig

    if (root / FLASHTALK_DIR / "config.json").is_file():
        return
    t0 = time.perf_counter()
    if tiny:
        write_fake_release(root)
    else:  # wav2vec: the base config's own values (a non-empty dict: the writer's "full config" switch)
        write_fake_release(root, DiTConfig(), VAEConfig(), VIT_H_14, UMT5_XXL, wav2vec={"hidden_size": 768}, shards=6)
    with torch.device("meta"):
        dec = TAEHVDecoder(TAEHVConfig.tiny() if tiny else TAEHVConfig.taew2_1())
    gen = torch.Generator().manual_seed(0)
    sd = {k: (0.02 * torch.randn(v.shape, generator=gen)).half() for k, v in dec.state_dict().items()}
    (root / "taehv").mkdir(exist_ok=True)
    save_file(sd, str(root / "taehv" / "taew2_1.safetensors"))
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    print(f"random release written to {root}: {size / 1e9:.1f} GB in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="auto,native", help="comma list: auto or profile names")
    ap.add_argument("--runs", default="cold,warm", help="comma list of cold (empty compile cache) / warm")
    ap.add_argument("--chunks", type=int, default=20, help="timed chunks after the renderer is ready")
    ap.add_argument("--decoder", default="taehv", choices=["taehv", "wan"])
    ap.add_argument("--fast-accum", action="store_true", help="model.fp8_fast_accum = true")
    ap.add_argument("--set", action="append", help="extra settings override (repeatable)")
    ap.add_argument("--tiny", action="store_true", help="tiny random family on the CPU, no compile (smoke)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write every run as JSON (after each)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per child")
    ap.add_argument("--release", default=None, metavar="DIR",
                    help="load through the real loader from this release folder (shards streamed from disk, fp8 "
                         "quantised block by block) instead of model.random_weights; written there with random "
                         "weights first when it holds none (full size: about 42 GB of disk)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--profile", default="auto", help=argparse.SUPPRESS)
    ap.add_argument("--cache", default="", help=argparse.SUPPRESS)
    ap.add_argument("--state", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0
    if args.release:
        write_release(Path(args.release), args.tiny)
    results: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    try:
        for prof in [p.strip() for p in args.profiles.split(",") if p.strip()]:
            cache = work / f"cache-{prof}"
            for run in [x.strip() for x in args.runs.split(",") if x.strip()]:
                if run == "cold":
                    shutil.rmtree(cache, ignore_errors=True)
                state = work / f"state-{prof}-{len(results)}"
                state.mkdir()
                cmd = [sys.executable, __file__, "--child", "--profile", prof, "--cache", str(cache), "--state",
                       str(state), "--chunks", str(args.chunks), "--decoder", args.decoder]
                cmd += ["--fast-accum"] if args.fast_accum else []
                cmd += ["--tiny"] if args.tiny else []
                cmd += ["--release", args.release] if args.release else []
                for x in args.set or []:
                    cmd += ["--set", x]
                t0 = time.perf_counter()
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
                wall = time.perf_counter() - t0
                line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
                row: dict[str, Any] = {"profile_setting": prof, "run": run, "process_s": wall}
                if p.returncode != 0 or not line:
                    row["error"] = (p.stderr or p.stdout)[-1500:]
                else:
                    row.update(json.loads(line[-1][7:]))
                    row["run"] = run
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if args.json:
                    Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nweights: {args.release or 'random, built on the device (model.random_weights)'}")
    print("| setting | run | ready s | build s | profile | auto eager trials | auto eager p90s | auto compiled p90s "
          "| load peak GiB | steady peak GiB | host peak GiB | chunk p50 / p99 / max s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['profile_setting']} | {r['run']} | error: {r['error'][-200:]!r} |")
            continue
        auto = r.get("auto") or {}
        eager = ", ".join(f"{e['profile']} {e['p90_s']:.3f}" for e in auto.get("eager", [])) or "-"
        comp = ", ".join(f"{e['profile']} {e['p90_s']:.3f}" for e in auto.get("measured", [])) or "-"
        trials = eager_trials(auto)
        gib = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"| {r['profile_setting']} | {r['run']} | {r['ready_s']:.1f} | {r['build_s']:.1f} | {r['profile']} | "
              f"{trials} | {eager} | {comp} | {gib(r['load_peak_gib'])} | {gib(r['steady_peak_gib'])} | {gib(r.get('host_peak_gib'))} | "
              f"{r['chunk_p50_s']:.3f} / {r['chunk_p99_s']:.3f} / {r['chunk_max_s']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
