"""The committed parity fixtures (tests/fixtures/parity/*) and the tiny models built from them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PARITY = FIXTURES / "parity"
DIT = PARITY / "dit"


def parity_dit_config() -> DiTConfig:
    return DiTConfig.from_dict(json.loads((DIT / "config.json").read_text()))


def parity_dit() -> FlashTalkDiT:
    """A fresh copy of the DiT fixture's tiny model with its weights (strict), in eval mode."""
    model = FlashTalkDiT(parity_dit_config())
    model.load_state_dict(load_file(DIT / "weights.safetensors"), strict=True)
    return model.eval()


def parity_dit_inputs() -> dict[str, torch.Tensor]:
    return load_file(DIT / "inputs.safetensors")
