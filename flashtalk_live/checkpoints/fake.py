"""Write a fake release of tiny random weights in exactly the released file names and formats (tests, demos).

`write_fake_release(root)` creates

    root/SoulX-FlashTalk-14B/   config.json, diffusion_pytorch_model-0000N-of-0000M.safetensors + index,
                                Wan2.1_VAE.pth, models_clip_...-vit-huge-14.pth (visual.* + textual.* + log_scale),
                                models_t5_umt5-xxl-enc-bf16.pth, google/umt5-xxl/, xlm-roberta-large/
    root/chinese-wav2vec2-base/ config.json, pytorch_model.bin, preprocessor_config.json

with modules that fit each other (DiT clip_dim = CLIP width, text_dim = T5 width, audio widths = wav2vec2),
so that `release.load_*` and an engine built on them run end to end on a CPU in seconds. The weights are
random (not trained): outputs are finite, not meaningful.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .release import (
    CLIP_FILE,
    CLIP_TOKENIZER_DIR,
    DIT_CONFIG,
    DIT_STEM,
    FLASHTALK_DIR,
    T5_FILE,
    T5_TOKENIZER_DIR,
    VAE_FILE,
    WAV2VEC_DIR,
)
from flashtalk_live.model.clip import CLIPVisual
from flashtalk_live.model.clip import CLIPVisualConfig
from flashtalk_live.model.dit import DiTConfig
from flashtalk_live.model.dit import FlashTalkDiT
from flashtalk_live.model.t5 import T5Config
from flashtalk_live.model.t5 import T5Encoder
from flashtalk_live.model.vae import VAEConfig
from flashtalk_live.model.vae import WanVAE
from safetensors.torch import save_file

__all__ = ["FakeRelease", "TOKENIZER_WORDS", "tiny_configs", "write_fake_release"]

# The fake umT5 tokenizer knows these words (others map to <unk>); ids 0, 1, 2 are <pad>, </s>, <unk>.
TOKENIZER_WORDS = (
    "a person is talking . only the foreground characters are moving , background remains static "
    "young woman presents product to camera in bright live-commerce studio"
).split()


def tiny_configs():
    """(DiTConfig, VAEConfig, CLIPVisualConfig, T5Config, wav2vec2 config dict) of a small, mutually fitting set."""

    clip = CLIPVisualConfig(dim=160, num_heads=2, num_layers=2, out_dim=16)  # head width 80, as ViT-H/14
    t5 = T5Config(vocab_size=256, dim=32, dim_attn=32, dim_ffn=64, num_heads=2, num_layers=2)
    w2v = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               conv_dim=[32] * 7, conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
               conv_bias=False, feat_extract_norm="group", num_conv_pos_embeddings=128,
               num_conv_pos_embedding_groups=16, do_stable_layer_norm=False, layer_norm_eps=1e-5)
    dit = DiTConfig(dim=128, num_heads=2, num_layers=2, ffn_dim=256, freq_dim=64, text_dim=t5.dim,
                    intermediate_dim=8, output_dim=32, context_tokens=4, clip_dim=clip.dim,
                    audio_layers=w2v["num_hidden_layers"], audio_channels=w2v["hidden_size"])
    return dit, VAEConfig.tiny(), clip, t5, w2v


@dataclass
class FakeRelease:
    root: Path
    weights_dir: Path
    wav2vec_dir: Path | None
    dit: object
    vae: object
    clip: object
    t5: object
    wav2vec: dict | None
    state_dicts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)  # as written


def _random_state_dict(module: nn.Module, gen: torch.Generator, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """O(1)-activation random weights: matrices N(0, 1/fan_in), norm scales ~1, biases small."""
    out = {}
    for name, t in module.state_dict().items():
        shape = tuple(t.shape)
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("gamma",) or (leaf == "weight" and len(shape) == 1):
            v = 1.0 + 0.05 * torch.randn(shape, generator=gen)
        elif len(shape) <= 1:
            v = 0.05 * torch.randn(shape, generator=gen)
        elif leaf == "modulation":
            v = 0.1 * torch.randn(shape, generator=gen)
        else:
            fan_in = max(1, math.prod(shape[1:]))
            v = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
        out[name] = v.to(dtype).contiguous()
    return out


def _meta(factory):
    with torch.device("meta"):
        return factory()


def _write_tokenizer(folder: Path, words, eos: bool) -> None:
    # transformers takes seconds to import: only when a fake release is written
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if eos:
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))


def write_fake_release(
    root: str | Path,
    dit=None,
    vae=None,
    clip=None,
    t5=None,
    *,
    wav2vec: dict | bool = True,
    shards: int = 2,
    seed: int = 0,
    dit_dtype: torch.dtype = torch.bfloat16,
    t5_dtype: torch.dtype = torch.bfloat16,
    clip_dtype: torch.dtype = torch.float16,
    vae_dtype: torch.dtype = torch.float32,
) -> FakeRelease:
    """Write a complete tiny release under `root` (see the module docstring); configs default to `tiny_configs()`.

    `wav2vec`: True for the tiny default, a dict of Wav2Vec2Config overrides, or False to skip that folder.
    Returns the paths, the configs and the state dicts exactly as written (in the stored dtypes).
    """

    d_dit, d_vae, d_clip, d_t5, d_w2v = tiny_configs()
    dit, vae, clip, t5 = dit or d_dit, vae or d_vae, clip or d_clip, t5 or d_t5
    w2v_config: dict | None = d_w2v if wav2vec is True else (wav2vec or None)
    root = Path(root)
    wdir = root / FLASHTALK_DIR
    wdir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    written: dict[str, dict[str, torch.Tensor]] = {}

    # DiT: config.json (diffusers style) + shards + index
    cfg = dit.to_dict()
    (wdir / DIT_CONFIG).write_text(json.dumps({"_class_name": "WanModel", "_diffusers_version": "0.30.0", **cfg},
                                              indent=2))
    sd = _random_state_dict(_meta(lambda: FlashTalkDiT(dit)), gen, dit_dtype)
    written["dit"] = sd
    keys = list(sd)
    shards = max(1, min(shards, len(keys)))
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    for i in range(shards):
        name = f"{DIT_STEM}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[i * per:(i + 1) * per]}
        save_file(part, str(wdir / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(t.numel() * t.element_size() for t in sd.values())
    (wdir / f"{DIT_STEM}.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))

    # VAE, T5: plain state dicts
    written["vae"] = _random_state_dict(_meta(lambda: WanVAE(vae)), gen, vae_dtype)
    torch.save(written["vae"], wdir / VAE_FILE)
    written["t5"] = _random_state_dict(_meta(lambda: T5Encoder(t5)), gen, t5_dtype)
    torch.save(written["t5"], wdir / T5_FILE)

    # CLIP: the full open-clip layout: log_scale, visual.*, and a (tiny, unused) textual.* tower
    visual = _random_state_dict(_meta(lambda: CLIPVisual(clip)), gen, clip_dtype)
    text_w = 16
    full = {"log_scale": torch.tensor(4.6052, dtype=clip_dtype)}
    full.update({f"visual.{k}": v for k, v in visual.items()})
    full.update({
        "textual.token_embedding.weight": torch.randn(64, text_w, generator=gen).to(clip_dtype),
        "textual.type_embedding.weight": torch.randn(1, text_w, generator=gen).to(clip_dtype),
        "textual.pos_embedding.weight": torch.randn(16, text_w, generator=gen).to(clip_dtype),
        "textual.norm.weight": torch.ones(text_w, dtype=clip_dtype),
        "textual.norm.bias": torch.zeros(text_w, dtype=clip_dtype),
        "textual.head.0.weight": torch.randn(text_w, text_w, generator=gen).to(clip_dtype),
    })
    written["clip"] = full
    torch.save(full, wdir / CLIP_FILE)

    _write_tokenizer(wdir / T5_TOKENIZER_DIR, TOKENIZER_WORDS, eos=True)
    _write_tokenizer(wdir / CLIP_TOKENIZER_DIR, TOKENIZER_WORDS, eos=False)

    w2v_dir = None
    if w2v_config:
        w2v_dir = root / WAV2VEC_DIR
        written["wav2vec2"] = _write_wav2vec(w2v_dir, dict(w2v_config), gen)
    return FakeRelease(root, wdir, w2v_dir, dit, vae, clip, t5, dict(w2v_config) if w2v_config else None, written)


def _write_wav2vec(folder: Path, overrides: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A transformers Wav2Vec2Model folder (config.json, pytorch_model.bin, preprocessor_config.json)."""
    # transformers takes seconds to import: only when a fake release is written
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    cfg = Wav2Vec2Config(**overrides)
    cfg.architectures = ["Wav2Vec2Model"]
    model = Wav2Vec2Model(cfg).eval()
    sd = _random_state_dict(model, gen, torch.float32)
    # weight-norm g must stay positive and O(1) for a sane positional conv
    for k in sd:
        if k.endswith("parametrizations.weight.original0"):
            sd[k] = 0.5 + 0.05 * sd[k].abs()
    model.load_state_dict(sd, strict=True)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=False)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=False).save_pretrained(str(folder))
    return sd

