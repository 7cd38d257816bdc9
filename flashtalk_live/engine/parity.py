"""verify-parity plugin: the `chunk/` fixture (schedule, session prepare, chunk 0 and 1 with the recorded noise).

Imported by flashtalk_live.checkpoints.parity (PLUGIN_MODULES); registers the `chunk` check, which uses the
fixture's `dit/` and `vae/` weights and `dit/inputs.safetensors` (context, clip_fea) as the README says.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from flashtalk_live.checkpoints.parity import CheckContext, CheckRow, SkipCheck, register_check
from flashtalk_live.checkpoints.loader import load_into
from flashtalk_live.engine.engine import EngineModels, FlashTalkEngine
from flashtalk_live.engine.profile import Profile
from flashtalk_live.engine.sampler import make_timesteps
from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT
from flashtalk_live.model.vae import VAEConfig, WanVAE
from safetensors.torch import load_file
import json

# Fixture README, chunk fixture with the stored noises injected (float32).
LATENT_REL = 2e-5
VIDEO_REL, VIDEO_ABS = 5e-5, 2e-3
_LATENT_SUFFIXES = ("latent_in", ".v", ".x0", "latent_final", "motion_latents_in", "motion_latents_out")


def _models(ctx: CheckContext):


    root = ctx.root
    for need in ("dit/config.json", "dit/weights.safetensors", "dit/inputs.safetensors", "vae/config.json",
                 "vae/weights.safetensors"):
        if not (root / need).is_file():
            raise SkipCheck(f"{need} absent (the chunk check uses the dit/ and vae/ fixtures)")

    dcfg = DiTConfig.from_dict(json.loads((root / "dit/config.json").read_text()))
    with torch.device("meta"):
        dit = FlashTalkDiT(dcfg)
    load_into(dit, load_file(str(root / "dit/weights.safetensors")), dtype=torch.float32, device=ctx.device,
              file=root / "dit/weights.safetensors")
    vcfg = VAEConfig.from_reference_kwargs(json.loads((root / "vae/config.json").read_text())["constructor_kwargs"])
    with torch.device("meta"):
        vae = WanVAE(vcfg)
    load_into(vae, load_file(str(root / "vae/weights.safetensors")), dtype=torch.float32, device=ctx.device,
              file=root / "vae/weights.safetensors")
    return dit, vae, load_file(str(root / "dit/inputs.safetensors"))


def check_chunk(ctx: CheckContext) -> Iterator[CheckRow]:
    cfg = ctx.json()
    pp = cfg["prepare_params"]
    h, w = pp["target_size"]
    profile = Profile(name="fixture", height=h, width=w, frame_num=pp["frame_num"], motion_frames=pp["motion_frames_num"],
                      sample_steps=pp["sampling_steps"], shift=pp["shift"],
                      colour_correction_strength=pp["color_correction_strength"], seed=pp["seed"])
    sampler = ctx.tensors("sampler.safetensors")
    for steps in (4, 2):
        yield ctx.compare(f"timesteps {steps} steps", make_timesteps(steps, profile.shift),
                          sampler[f"timesteps_{steps}steps"], max_abs=0.0, rel_l2=0.0)
    dit, vae, dit_inputs = _models(ctx)
    inputs = ctx.tensors("inputs.safetensors")
    prep = ctx.tensors("prepare.safetensors")
    eng = FlashTalkEngine(EngineModels(dit=dit, vae=vae), profile, ctx.device, torch.float32)
    image = inputs["cond_image_u8"].permute(1, 2, 0).numpy().astype(np.uint8)
    s = eng.start_session(image, "fixture", context=dit_inputs["context"], clip_fea=dit_inputs["clip_fea"])
    yield ctx.compare("prepare cond_image", s.cond_image, prep["cond_image"], max_abs=0.0, rel_l2=0.0)
    yield ctx.compare("prepare y", s.y, prep["y"], max_abs=None, rel_l2=LATENT_REL)
    yield ctx.compare("prepare motion_latents_chunk0", s.motion0, prep["motion_latents_chunk0"], max_abs=None,
                      rel_l2=LATENT_REL)
    stride = profile.new_frames
    for k in range(int(cfg.get("n_chunks", 2))):
        fx = ctx.tensors(f"chunk{k}.safetensors")
        trace: dict = {}
        audio = inputs["audio_all"][:, k * stride : k * stride + profile.frame_num].to(ctx.device)
        noise = [fx[f"noise_{i}"] for i in range(profile.sample_steps + 1)]
        frames = eng.generate_chunk(audio, noise=noise, trace=trace)
        for key, want in fx.items():
            if key.startswith("noise_"):
                continue
            if key.endswith(".t"):
                yield ctx.compare(f"chunk{k} {key}", trace[key], want, max_abs=0.0, rel_l2=0.0)
            elif key.endswith(_LATENT_SUFFIXES):
                yield ctx.compare(f"chunk{k} {key}", trace[key], want, max_abs=None, rel_l2=LATENT_REL)
            else:
                yield ctx.compare(f"chunk{k} {key}", trace[key], want, max_abs=VIDEO_ABS, rel_l2=VIDEO_REL)
        cc = fx["colour_corrected"][0]
        want_u8 = (((cc + 1) / 2).permute(1, 2, 3, 0).clip(0, 1) * 255)[profile.motion_frames:].numpy().astype(np.uint8)
        diff = np.abs(frames.astype(np.int16) - want_u8.astype(np.int16))
        frac = float((diff > 0).mean())
        ok = frames.shape == want_u8.shape and diff.max() <= 1 and frac < 1e-2
        yield CheckRow("chunk", f"chunk{k} uint8 frames", "pass" if ok else "fail", float(diff.max()), None, 1.0, None,
                       note=f"{frac:.1e} of values off by 1 (truncation at integer boundaries)")


register_check("chunk", check_chunk, folder="chunk")
