"""Rank 0 of a CPU/gloo test job (run as a script by tests/parallel with PYTHONPATH=.:tests): launches the workers,
runs, saves results.

    python tests/parallel/_driver.py dit    --world-size N --heads H --out results.safetensors
    python tests/parallel/_driver.py engine --world-size N [--split-vae] --out results.safetensors
    python tests/parallel/_driver.py renderer --world-size N --out results.safetensors   (daemon path, fake release)
    python tests/parallel/_driver.py idle   --world-size N --out pids.json   (for the kill tests)
    torchrun --nproc-per-node N tests/parallel/_driver.py torchrun --out results.safetensors

Results hold the parallel outputs next to the single-process ones computed here with the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from flashtalk_live.parallel.launch import WorkerSpec, files_dit, launch_workers

ROOT = Path(__file__).resolve().parents[2]

PARITY = ROOT / "tests" / "fixtures" / "parity"
DIT = PARITY / "dit"
CHUNK = PARITY / "chunk"

torch.set_num_threads(1)


def spec(world: int, heads: int, *, split_vae: bool = False, fp8: dict | None = None, **kw) -> WorkerSpec:
    if split_vae:  # workers load the same fixture VAE as rank 0
        kw.update(vae_factory="flashtalk_live.parallel.launch:files_vae",
                  vae_factory_args={"config_json": str(PARITY / "vae" / "config.json"),
                                    "weights": str(PARITY / "vae" / "weights.safetensors")})
    return WorkerSpec(num_heads=heads, devices=list(range(world)), device_type="cpu", dtype="float32",
                      factory="flashtalk_live.parallel.launch:files_dit",
                      factory_args={"config_json": str(DIT / "config.json"), "weights": str(DIT / "weights.safetensors"),
                                    "overrides": {"num_heads": heads}, **({"fp8": fp8} if fp8 else {})},
                      threads=1, **kw)


def odd_geometry_inputs(seed: int = 7) -> dict[str, torch.Tensor]:
    """A latent of 3 x 6 x 6 -> 27 tokens (9 per frame): divides by neither 2 nor 4."""
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(1, 16, 3, 6, 6, generator=g),
        "y": torch.randn(1, 20, 3, 6, 6, generator=g),
        "audio": torch.randn(1, 9, 5, 12, 768, generator=g),
        "t": torch.tensor([700.0]),
    }


def run_dit(args) -> None:
    inputs = load_file(DIT / "inputs.safetensors")
    fp8 = {"keep_bf16_blocks": [0, 0]} if args.fp8 else None  # every block's linears in fp8, on every rank
    model = files_dit(device=torch.device("cpu"), dtype=torch.float32, config_json=str(DIT / "config.json"),
                      weights=str(DIT / "weights.safetensors"), overrides={"num_heads": args.heads}, fp8=fp8)
    cases = {}
    for name in ("case_a", "case_b"):
        c = load_file(DIT / f"{name}.safetensors")
        cases[name] = dict(x=c["x"][None], y=inputs["y"][None], audio=inputs["audio"], t=c["t"])
    cases["odd"] = odd_geometry_inputs()
    ctx, clip = inputs["context"][None], inputs["clip_fea"]
    t0 = time.perf_counter()
    handle = launch_workers(spec(args.world_size, args.heads, fp8=fp8))
    client = handle.wrap_dit(model)
    print(f"launched {args.world_size} ranks in {time.perf_counter() - t0:.1f}s: {handle.pg.describe()}", flush=True)
    out = {}
    for name, c in cases.items():
        t1 = time.perf_counter()
        out[f"{name}.parallel"] = client(c["x"], c["t"], ctx, clip, c["y"], c["audio"])[0]
        t2 = time.perf_counter()
        with torch.no_grad():
            out[f"{name}.single"] = model(c["x"], c["t"], ctx, clip, c["y"], c["audio"])[0]
        print(f"{name}: parallel {t2 - t1:.2f}s single {time.perf_counter() - t2:.2f}s", flush=True)
    # A rejected input fails on every rank before any collective; the job stays usable.
    from flashtalk_live.model.dit import DiTInputError

    c = cases["odd"]
    try:
        client(c["x"], c["t"], ctx, clip, c["y"], c["audio"][:, :5])
        out["bad_input_rejected"] = torch.tensor([0])
    except DiTInputError as e:
        print(f"rejected as expected: {e}", flush=True)
        out["bad_input_rejected"] = torch.tensor([1])
    out["odd.again"] = client(c["x"], c["t"], ctx, clip, c["y"], c["audio"])[0]
    out["attention_calls"] = torch.tensor([client.split.attention.calls])
    codes = handle.close()
    print(f"worker exit codes {codes}", flush=True)
    out["worker_codes"] = torch.tensor([-1 if c is None else c for c in codes])
    save_file(out, args.out)


def run_engine(args) -> None:
    from flashtalk_live.engine.engine import EngineModels, FlashTalkEngine
    from flashtalk_live.engine.profile import Profile
    from flashtalk_live.model.vae import VAEConfig, WanVAE

    cfg = json.loads((CHUNK / "config.json").read_text())["prepare_params"]
    h, w = cfg["target_size"]
    profile = Profile(name="fixture", height=h, width=w, frame_num=cfg["frame_num"],
                      motion_frames=cfg["motion_frames_num"], sample_steps=cfg["sampling_steps"], shift=cfg["shift"],
                      colour_correction_strength=cfg["color_correction_strength"], seed=cfg["seed"])
    vkw = json.loads((PARITY / "vae" / "config.json").read_text())["constructor_kwargs"]
    vae = WanVAE(VAEConfig.from_reference_kwargs(vkw))
    vae.load_state_dict(load_file(PARITY / "vae" / "weights.safetensors"), strict=True)
    vae = vae.eval().requires_grad_(False)
    dit = files_dit(device=torch.device("cpu"), dtype=torch.float32, config_json=str(DIT / "config.json"),
                    weights=str(DIT / "weights.safetensors"))
    inputs = load_file(CHUNK / "inputs.safetensors")
    dit_inputs = load_file(DIT / "inputs.safetensors")
    image = inputs["cond_image_u8"].permute(1, 2, 0).numpy().astype(np.uint8)

    handle = launch_workers(spec(args.world_size, 2, split_vae=args.split_vae))
    client = handle.wrap_dit(dit)
    out = {}
    from flashtalk_live.parallel.group import ParallelConfigError

    vae_client = vae
    out["refused"] = torch.tensor([0])
    try:
        if args.split_vae:  # a replaced split VAE refuses to decode (its successor is the live one)
            old = handle.wrap_vae(vae)
            vae_client = handle.wrap_vae(vae)
            old.decode(torch.zeros(1, 16, 2, 8, 4))
        else:  # without a VAE on the workers the split is refused on rank 0, before anything is sent
            handle.wrap_vae(vae, enabled=True)
    except (ParallelConfigError, RuntimeError) as e:
        print(f"refused as expected: {type(e).__name__}: {e}", flush=True)
        out["refused"] = torch.tensor([1])
    for label, model, vmodel in (("parallel", client, vae_client), ("single", dit, vae)):
        eng = FlashTalkEngine(EngineModels(dit=model, vae=vmodel), profile, "cpu", torch.float32, timing=True)
        eng.start_session(image, "fixture", context=dit_inputs["context"], clip_fea=dit_inputs["clip_fea"])
        for k in range(2):
            fx = load_file(CHUNK / f"chunk{k}.safetensors")
            trace: dict = {}
            audio = inputs["audio_all"][:, 8 * k: 8 * k + 13]
            t0 = time.perf_counter()
            frames = eng.generate_chunk(audio, noise=[fx[f"noise_{i}"] for i in range(5)], trace=trace)
            print(f"{label} chunk {k}: {time.perf_counter() - t0:.2f}s", flush=True)
            out[f"{label}.chunk{k}.frames"] = torch.from_numpy(frames)
            for key in ("latent_final", "decoded", "motion_latents_out"):
                out[f"{label}.chunk{k}.{key}"] = trace[key]
    out["sent_bytes"] = torch.tensor([client.bytes_sent])
    out["dit_calls"] = torch.tensor([client.calls])
    out["vae_decode_calls"] = torch.tensor([getattr(vae_client, "calls", 0)])
    codes = handle.close()
    out["worker_codes"] = torch.tensor([-1 if c is None else c for c in codes])
    save_file(out, args.out)


def run_renderer(args) -> None:
    """The daemon's path on a fake tiny release: settings (model.gpus, a profile with split_vae_decode) ->
    maybe_launch_workers -> parallel_flashtalk_renderer (warm-up over the ranks) -> chunks; then the same
    settings in one process (build_flashtalk_renderer), same chunks. --lead-in N: the first chunk is a lead-in of N
    frames (video.lead_in_frames), its own shape over the ranks too."""
    from flashtalk_live.checkpoints.fake import write_fake_release
    from flashtalk_live.engine.renderer import FlashTalkConfig, build_flashtalk_renderer
    from flashtalk_live.parallel.launch import maybe_launch_workers, parallel_flashtalk_renderer
    from flashtalk_live.config import load_settings
    from flashtalk_live.engine.profile import room_profiles
    from flashtalk_live.chunks import RenderChunk

    os.environ["OMP_NUM_THREADS"] = "1"  # the workers (spec_from_settings sets no thread count)
    root = Path(args.out).parent / "renderer"  # beside the results: the test's tmp_path
    rel = write_fake_release(root / "models")
    n = 8
    (root / "tiny.toml").write_text('base = "quality"\nheight = 64\nwidth = 32\nframe_num = 13\n'
                                    'motion_frames = 5\nsplit_vae_decode = true\n')
    settings = load_settings(None, [
        f'model.weights_dir="{rel.weights_dir}"', f'model.wav2vec_dir="{rel.wav2vec_dir}"',
        f'model.profile="{root / "tiny.toml"}"', 'model.device="cpu"', 'model.dtype="float32"',
        f"model.gpus={args.world_size}", f"video.chunk_frames={n}", "video.width=32", "video.height=64",
        f"video.lead_in_frames={[args.lead_in] if args.lead_in else []}", f'state_dir="{root / "state"}"'],
        environ={})
    sizes = [args.lead_in or n, n]

    def chunk(i: int) -> RenderChunk:
        k = sizes[i]
        rng = np.random.default_rng(i)
        model = (0.1 * rng.standard_normal(k * 640)).astype(np.float32)
        hist = np.zeros(128000, np.float32)
        hist[-model.shape[0]:] = model
        return RenderChunk(index=i, start_frame=sum(sizes[:i]), n_frames=k, audio=np.zeros((k * 1920, 2), np.float32),
                           model_audio=model, frame_segments=[None] * k, idle=False, model_history=hist)

    out: dict[str, torch.Tensor] = {}
    handle = maybe_launch_workers(settings.model, room_profiles(settings))
    config = FlashTalkConfig.from_settings(settings)
    assert handle is not None and handle.spec.vae_factory is not None, handle and handle.spec
    out["worker_vae"] = torch.tensor([int(handle.spec.vae_factory.endswith(":release_vae"))])
    r = parallel_flashtalk_renderer(config, None, handle)
    out["warm_decodes"] = torch.tensor([handle.vae_client.calls])
    for i in range(2):
        out[f"parallel.frames{i}"] = torch.from_numpy(r.render(chunk(i)))
    out["decodes"] = torch.tensor([handle.vae_client.calls])
    out["dit_calls"] = torch.tensor([handle.client.calls])
    r.close()
    codes = handle.close()
    out["worker_codes"] = torch.tensor([-1 if c is None else c for c in codes])
    r = build_flashtalk_renderer(config, None)
    for i in range(2):
        out[f"single.frames{i}"] = torch.from_numpy(r.render(chunk(i)))
    r.close()
    save_file(out, args.out)


def run_idle(args) -> None:
    """Start a job, do one forward, write the pids, then idle until killed by the job going down."""
    handle = launch_workers(spec(args.world_size, 2, heartbeat_interval_s=0.5, heartbeat_timeout_s=args.hb_timeout))
    inputs = load_file(DIT / "inputs.safetensors")
    model = files_dit(device=torch.device("cpu"), dtype=torch.float32, config_json=str(DIT / "config.json"),
                      weights=str(DIT / "weights.safetensors"))
    client = handle.wrap_dit(model)
    c = odd_geometry_inputs()
    client(c["x"], c["t"], inputs["context"][None], inputs["clip_fea"], c["y"], c["audio"])
    Path(args.out).write_text(json.dumps({"root": os.getpid(), "workers": [p.pid for p in handle.processes]}))
    print("idle", flush=True)
    time.sleep(600)  # the heartbeat/monitor must end this process long before
    sys.exit(0)


def run_torchrun(args) -> None:
    """Under torchrun: every rank calls maybe_launch_workers; rank 0 gets the handle, the others serve and exit."""
    from flashtalk_live.parallel.launch import maybe_launch_workers
    from flashtalk_live.settings import ModelSettings

    # gpus is ignored under torchrun: WORLD_SIZE decides
    handle = maybe_launch_workers(ModelSettings(gpus=1), (), spec(int(os.environ["WORLD_SIZE"]), 2))
    assert handle is not None and handle.pg.rank == 0  # workers never get here
    inputs = load_file(DIT / "inputs.safetensors")
    case = load_file(DIT / "case_a.safetensors")
    model = files_dit(device=torch.device("cpu"), dtype=torch.float32, config_json=str(DIT / "config.json"),
                      weights=str(DIT / "weights.safetensors"))
    client = handle.wrap_dit(model)
    out = client(case["x"][None], case["t"], inputs["context"][None], inputs["clip_fea"], inputs["y"][None],
                 inputs["audio"])[0]
    handle.close()
    save_file({"out": out, "want": case["out"]}, args.out)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["dit", "engine", "renderer", "idle", "torchrun"])
    ap.add_argument("--hb-timeout", type=float, default=20.0)
    ap.add_argument("--world-size", type=int, default=0)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--split-vae", action="store_true")
    ap.add_argument("--lead-in", type=int, default=0, help="renderer mode: the first chunk a lead-in of N frames")
    ap.add_argument("--fp8", action="store_true", help="dit mode: fp8 block linears on every rank")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    modes = {"dit": run_dit, "engine": run_engine, "renderer": run_renderer, "idle": run_idle, "torchrun": run_torchrun}
    modes[a.mode](a)
