"""Random weights of the FlashTalk model family, built on the device with no checkpoint files (benchmarks only).

`random_engine_models("full" | "tiny", device, dtype)` returns EngineModels of the full-size (14B DiT, Wan
VAE, CLIP ViT-H/14, wav2vec2-base) or tiny test configs. Modules are built on `meta` and materialised
directly on the device (no host copy of 38 GB): matrices N(0, 1/fan_in), norm scales 1, biases 0. The DiT is
materialised block by block (`materialise_dit`), and with an fp8 plan each chosen block is quantised before the
next one exists, as the release loader does while streaming shards: the bf16 copy of the whole DiT (37.8 GB) is
never on the device, so a benchmark's load peak is the real load's, not a 14B-in-bf16 transient. The
numbers are only good for speed and memory; the pictures are noise, which is why settings refuse
`model.random_weights` outside a benchmark run (settings.check_benchmark_only).
"""

from __future__ import annotations

import hashlib
import math
from typing import Callable

import torch

from flashtalk_live.engine.engine import EngineModels
from flashtalk_live.checkpoints.fake import tiny_configs
from flashtalk_live.checkpoints.taehv import random_fixture_weights
from flashtalk_live.model.clip import VIT_H_14, CLIPVisual
from flashtalk_live.model.dit import DiTConfig, FlashTalkDiT
from flashtalk_live.model.taehv import TAEHVConfig, TAEHVDecoder, TinyVideoDecoder
from flashtalk_live.model.vae import VAEConfig, WanVAE
from flashtalk_live.quant.fp8 import Fp8Plan

KINDS = ("full", "tiny")
BlockHook = Callable[[int, torch.nn.Module], None]


@torch.no_grad()
def randomise_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fill every floating parameter/buffer in place on its device: O(1) activations, no host round trip."""
    gen = torch.Generator(next(module.parameters()).device).manual_seed(seed)
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if not t.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "gamma" or (leaf == "weight" and t.ndim == 1):
            t.fill_(1.0)
        elif t.ndim <= 1:
            t.zero_()
        elif leaf == "modulation":
            t.normal_(0.0, 0.05, generator=gen)
        else:
            t.normal_(0.0, 1.0 / math.sqrt(max(1, math.prod(t.shape[1:]))), generator=gen)
    return module


def materialise(factory: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype,
                seed: int) -> torch.nn.Module:
    """factory() built on meta in `dtype`, then allocated on `device` and randomised; eval, no grad."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # allocate in the target dtype: the 14B DiT in fp32 would not fit
    try:
        with torch.device("meta"):
            module = factory()
    finally:
        torch.set_default_dtype(prev)
    module = module.to_empty(device=device)
    return randomise_(module, seed).eval().requires_grad_(False)


def materialise_dit(cfg: DiTConfig, device: torch.device, dtype: torch.dtype, seed: int,
                    fp8: Fp8Plan | None = None, on_block: BlockHook | None = None) -> FlashTalkDiT:
    """A random FlashTalkDiT built on meta and allocated one transformer block at a time; with `fp8` each chosen
    block is quantised right after it is filled, so at most one block exists in bf16 beyond the kept ones.
    on_block(i, block) runs after block i is filled and before it is quantised (tests watch the bytes there)."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            dit = FlashTalkDiT(cfg)
    finally:
        torch.set_default_dtype(prev)
    blocks, dit.blocks = dit.blocks, torch.nn.ModuleList()  # the rest first, without the 40 blocks
    randomise_(dit.to_empty(device=device), seed)  # in place: to_empty returns the module itself
    quantised = set(fp8.blocks(len(blocks))) if fp8 is not None else set()
    for i in range(len(blocks)):
        block = randomise_(blocks[i].to_empty(device=device), seed * 1000 + i)
        if on_block is not None:
            on_block(i, block)
        if i in quantised:
            fp8.quantize_block_(block)  # quantised only when fp8 is given
        blocks[i] = block
        del block
    dit.blocks = blocks
    return dit.eval().requires_grad_(False)


class RandomTextEncoder:
    """Prompt -> a fixed-seed random umT5-like context [tokens, text_dim] (no T5 is loaded)."""

    def __init__(self, text_dim: int, tokens: int = 24) -> None:
        self.text_dim, self.tokens = text_dim, tokens
        self.identity = f"random-t5-{text_dim}"

    def __call__(self, prompt: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "little")
        return torch.randn(self.tokens, self.text_dim, generator=torch.Generator().manual_seed(seed)) * 0.1


def random_engine_models(kind: str, device: torch.device | str, dtype: torch.dtype,
                         decoder: str = "wan", fp8: Fp8Plan | None = None) -> EngineModels:
    """DiT, VAE, CLIP visual, wav2vec2 (+ feature extractor), a random text encoder of `kind`, and with
    decoder="taehv" the tiny decoder (the parity fixture's random weights, full size). fp8: quantise the DiT's
    blocks while building it (materialise_dit), as the release loader does while loading."""
    # transformers takes seconds to import: only for a random-weights benchmark
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    if kind not in KINDS:
        raise ValueError(f"random weights kind must be one of {KINDS}, got {kind!r}")
    device = torch.device(device)
    if kind == "tiny":
        dcfg, vcfg, ccfg, _t5, w2v = tiny_configs()
        wcfg = Wav2Vec2Config(**w2v)
    else:
        dcfg, vcfg, ccfg, wcfg = DiTConfig.flashtalk_14b(), VAEConfig.released(), VIT_H_14, Wav2Vec2Config()
    clip_dtype = torch.float16 if device.type == "cuda" and dtype != torch.float32 else dtype
    dit = materialise_dit(dcfg, device, dtype, 1, fp8)
    vae = materialise(lambda: WanVAE(vcfg), device, dtype, 2)
    clip = materialise(lambda: CLIPVisual(ccfg), device, clip_dtype, 3)
    wav2vec = materialise(lambda: Wav2Vec2Model(wcfg), device, torch.float32, 4)
    with torch.no_grad():  # weight-norm g of the positional conv must stay positive
        for n, p in wav2vec.named_parameters():
            if n.endswith("original0"):
                p.fill_(0.5)
    fe = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                                  return_attention_mask=False)
    tiny_decoder = None
    if decoder == "taehv":
        tcfg = TAEHVConfig.taew2_1() if kind == "full" else TAEHVConfig.tiny(vcfg.z_dim)
        taehv = TAEHVDecoder(tcfg)
        taehv.load_state_dict(random_fixture_weights(tcfg))
        tiny_decoder = TinyVideoDecoder(taehv.to(device=device, dtype=dtype).eval())
    return EngineModels(dit=dit, vae=vae, clip=clip, wav2vec=wav2vec, feature_extractor=fe,
                        text=RandomTextEncoder(dcfg.text_dim), decoder=tiny_decoder)
