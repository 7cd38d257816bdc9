"""Helpers that build the chunk/ fixture's tiny models and inputs (tests only)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from flashtalk_live.engine.engine import EngineModels, FlashTalkEngine
from flashtalk_live.engine.profile import Profile
from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT
from flashtalk_live.model.vae import VAEConfig, WanVAE

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"
CHUNK = PARITY / "chunk"


def fixture_profile() -> Profile:
    cfg = json.loads((CHUNK / "config.json").read_text())["prepare_params"]
    h, w = cfg["target_size"]
    return Profile(name="fixture", height=h, width=w, frame_num=cfg["frame_num"], motion_frames=cfg["motion_frames_num"],
                   sample_steps=cfg["sampling_steps"], shift=cfg["shift"],
                   colour_correction_strength=cfg["color_correction_strength"], seed=cfg["seed"])


def fixture_models() -> EngineModels:
    dcfg = DiTConfig.from_dict(json.loads((PARITY / "dit" / "config.json").read_text()))
    dit = FlashTalkDiT(dcfg)
    dit.load_state_dict(load_file(PARITY / "dit" / "weights.safetensors"), strict=True)
    vkw = json.loads((PARITY / "vae" / "config.json").read_text())["constructor_kwargs"]
    vae = WanVAE(VAEConfig.from_reference_kwargs(vkw))
    vae.load_state_dict(load_file(PARITY / "vae" / "weights.safetensors"), strict=True)
    return EngineModels(dit=dit.eval().requires_grad_(False), vae=vae.eval().requires_grad_(False))


def fixture_engine(**kw) -> tuple[FlashTalkEngine, dict[str, torch.Tensor]]:
    """An engine with the fixture session started (context and clip_fea from dit/inputs, image from chunk/inputs)."""
    inputs = load_file(CHUNK / "inputs.safetensors")
    dit_inputs = load_file(PARITY / "dit" / "inputs.safetensors")
    eng = FlashTalkEngine(fixture_models(), fixture_profile(), "cpu", torch.float32, **kw)
    image = inputs["cond_image_u8"].permute(1, 2, 0).numpy().astype(np.uint8)
    eng.start_session(image, "fixture", context=dit_inputs["context"], clip_fea=dit_inputs["clip_fea"])
    return eng, inputs
