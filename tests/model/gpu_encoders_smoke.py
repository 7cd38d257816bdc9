"""Manual GPU check of the encoders (not collected by pytest): fixture parity on CUDA in float32, then the
full-size CLIP ViT-H/14 visual tower and umT5-XXL encoder on random bf16 weights, and a random-weight
wav2vec2-base re-encoding one 8-s stream window, with time and peak memory printed.

    PYTHONPATH=.:tests python3 tests/model/gpu_encoders_smoke.py
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from flashtalk_live.model.audio import (
    DEFAULT_AUDIO,
    StreamingAudioEncoder,
    load_wav2vec2,
)
from flashtalk_live.model.clip import VIT_H_14, CLIPVisual, CLIPVisualConfig, split_clip_state_dict
from flashtalk_live.model.t5 import UMT5_XXL, T5Config, T5Encoder

from support.tensors import errors as err

PARITY = Path(__file__).resolve().parents[1] / "fixtures" / "parity"


def timed(fn, dev, repeats=3):
    fn()  # warm-up
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    t = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    torch.cuda.synchronize(dev)
    return out, (time.perf_counter() - t) / repeats * 1000, torch.cuda.max_memory_allocated(dev) / 2**30


def random_init_(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "weight" in name:
                p.fill_(1.0)
            elif p.ndim == 1:
                p.zero_()
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.normal_(0, fan_in**-0.5, generator=g)


@torch.no_grad()
def parity(dev):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    io = load_file(PARITY / "clip_visual" / "io.safetensors")
    clip = CLIPVisual(CLIPVisualConfig(dim=64, num_heads=2, num_layers=4, out_dim=32)).eval()
    clip.load_state_dict(split_clip_state_dict(load_file(PARITY / "clip_visual" / "weights.safetensors"))[0])
    print("parity cuda fp32 clip features: max_abs %.3e rel_l2 %.3e" % err(clip.to(dev).encode(io["image"]), io["features"]))
    io = load_file(PARITY / "t5" / "io.safetensors")
    t5 = T5Encoder(T5Config(vocab_size=512, dim=64, dim_attn=64, dim_ffn=160, num_heads=2, num_layers=2)).eval()
    t5.load_state_dict(load_file(PARITY / "t5" / "weights.safetensors"))
    (ctx,) = t5.to(dev).encode(io["ids"].to(dev), io["mask"].to(dev))
    print("parity cuda fp32 t5 context: max_abs %.3e rel_l2 %.3e" % err(ctx, io["context"]))
    io = load_file(PARITY / "audio" / "io.safetensors")
    m, fe = load_wav2vec2(PARITY / "audio" / "wav2vec2_tiny", device=dev)
    enc = StreamingAudioEncoder(m, fe)
    for k in range(2):
        out = enc.push(io["waveform"].numpy()[k * 17920 : (k + 1) * 17920])
        print(f"parity cuda fp32 audio stream chunk{k}: max_abs %.3e rel_l2 %.3e" % err(out, io[f"stream_chunk{k}_windows"]))


@torch.no_grad()
def full_size(dev):
    with torch.device("meta"):
        clip = CLIPVisual(VIT_H_14)
    clip = clip.to_empty(device=dev).eval()
    random_init_(clip)
    clip = clip.to(torch.bfloat16)
    print(f"clip visual params: {sum(p.numel() for p in clip.parameters()):,}")
    image = torch.rand(1, 3, 1, 768, 448, device=dev) * 2 - 1  # the pipeline's cond image [-1, 1]
    out, ms, peak = timed(lambda: clip.encode(image), dev)
    print(f"clip ViT-H/14 bf16 encode [1,3,1,768,448] -> {tuple(out.shape)} {out.dtype}: {ms:.1f} ms, peak {peak:.2f} GiB, finite {bool(out.isfinite().all())}")
    frames = torch.randint(0, 256, (8, 448, 768, 3), dtype=torch.uint8, device=dev)
    feats, ms, peak = timed(lambda: clip.image_features(frames), dev)
    print(f"clip image_features 8 frames -> {tuple(feats.shape)}: {ms:.1f} ms, peak {peak:.2f} GiB")
    del clip, out, feats
    torch.cuda.empty_cache()

    with torch.device("meta"):
        t5 = T5Encoder(UMT5_XXL)
    t5 = t5.to_empty(device=dev).eval()
    random_init_(t5)
    with torch.no_grad():
        t5.token_embedding.weight.normal_(0, 1)
    t5 = t5.to(torch.bfloat16)
    print(f"umT5-XXL encoder params: {sum(p.numel() for p in t5.parameters()):,}")
    ids = torch.zeros(1, 512, dtype=torch.long, device=dev)
    ids[0, :24] = torch.randint(2, 256384, (24,), device=dev)
    ids[0, 24] = 1
    mask = (torch.arange(512, device=dev) < 25).long()[None]
    (ctx,), ms, peak = timed(lambda: t5.encode(ids, mask), dev)
    print(f"umT5-XXL bf16 encode 512 tokens (25 real) -> {tuple(ctx.shape)}: {ms:.1f} ms, peak {peak:.2f} GiB, finite {bool(ctx.isfinite().all())}")
    del t5
    torch.cuda.empty_cache()

    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    w2v = Wav2Vec2Model(Wav2Vec2Config()).to(dev).eval()  # base geometry: 768 hidden, 12 layers
    fe = Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=False)
    enc = StreamingAudioEncoder(w2v, fe)
    chunk = (np.random.default_rng(0).standard_normal(DEFAULT_AUDIO.slice_samples) * 0.1).astype(np.float32)
    out, ms, peak = timed(lambda: enc.push(chunk), dev)
    print(f"wav2vec2-base fp32 stream push (8-s re-encode) -> {tuple(out.shape)}: {ms:.1f} ms, peak {peak:.2f} GiB")


if __name__ == "__main__":
    dev = torch.device("cuda")
    print(torch.cuda.get_device_name(dev), torch.__version__)
    parity(dev)
    full_size(dev)
