"""CLIP image encoder: the visual tower of open-clip XLM-RoBERTa ViT-H/14 as FlashTalk uses it.

Only the visual tower is built. The module's state-dict keys are the released file's ``visual.*``
keys without the ``visual.`` prefix; :func:`split_clip_state_dict` does that split (pure dict logic).
FlashTalk conditions the DiT on the output of blocks 0..n-2 (31 of 32), without ``post_norm`` or
``head``: :meth:`CLIPVisual.encode` -> [B, 257, 1280]. :meth:`CLIPVisual.image_features` is the
real CLIP image embedding (all blocks, ``post_norm`` on the class token, ``head``), unit-normalised,
for cosine-similarity checks such as identity drift.
"""

from __future__ import annotations

from dataclasses import dataclass

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .transfer import device_constant

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIPVisual",
    "CLIPVisualConfig",
    "VIT_H_14",
    "preprocess_images",
    "split_clip_state_dict",
]

# OpenAI CLIP normalisation, used by the reference for this model.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

VISUAL_PREFIX = "visual."
TEXT_PREFIX = "textual."
# The logit scale of the contrastive model: part of the text/image pairing, not of the visual tower.
CLIP_TEXT_SIDE_KEYS = ("log_scale",)


@dataclass(frozen=True)
class CLIPVisualConfig:
    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    mlp_ratio: float = 4
    out_dim: int = 1024
    num_heads: int = 16
    num_layers: int = 32
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not a multiple of num_heads {self.num_heads}")
        if self.num_layers < 2:
            raise ValueError("num_layers must be >= 2 (the features drop the last block)")

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


VIT_H_14 = CLIPVisualConfig()


def split_clip_state_dict(sd: dict) -> tuple[dict, list[str], list[str]]:
    """Split a full CLIP state dict into (visual_sd, ignored_text_keys, unexpected_keys).

    ``visual_sd`` holds the ``visual.*`` entries with the prefix removed (the keys of
    :class:`CLIPVisual`); ``ignored_text_keys`` lists the text-tower keys (``textual.*`` and the
    contrastive ``log_scale``) that FlashTalk knowingly does not use; ``unexpected_keys`` lists
    everything else, which a strict loader should reject. Lists are sorted.
    """
    visual: dict = {}
    ignored: list[str] = []
    unexpected: list[str] = []
    for key, value in sd.items():
        if key.startswith(VISUAL_PREFIX) and len(key) > len(VISUAL_PREFIX):
            visual[key[len(VISUAL_PREFIX):]] = value
        elif key.startswith(TEXT_PREFIX) or key in CLIP_TEXT_SIDE_KEYS:
            ignored.append(key)
        else:
            unexpected.append(key)
    return visual, sorted(ignored), sorted(unexpected)


def preprocess_images(images: torch.Tensor, image_size: int = 224) -> torch.Tensor:
    """Reference CLIP preprocessing of images in [-1, 1].

    ``images``: [B, 3, H, W] or the pipeline's [B, 3, T, H, W] (each of the T frames becomes one
    image, sample-major). Bicubic resize (align_corners=False), then ``x*0.5+0.5`` with no clamp
    (bicubic overshoot survives, as in the reference), then CLIP mean/std. Returns float32
    [B*T, 3, image_size, image_size].
    """
    if not torch.is_tensor(images) or not images.is_floating_point():
        raise TypeError("images must be a floating-point tensor with values in [-1, 1]")
    if images.ndim == 5:
        if images.shape[1] != 3:
            raise ValueError(f"expected [B, 3, T, H, W], got {tuple(images.shape)}")
        images = images.transpose(1, 2).flatten(0, 1)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected [B, 3, H, W] or [B, 3, T, H, W], got {tuple(images.shape)}")
    x = F.interpolate(images.float(), size=(image_size, image_size), mode="bicubic", align_corners=False)
    x = x * 0.5 + 0.5
    mean = device_constant(CLIP_MEAN, x.dtype, x.device).view(1, 3, 1, 1)
    std = device_constant(CLIP_STD, x.dtype, x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class _LayerNorm(nn.LayerNorm):
    # Computed in float32 whatever the weight dtype, as the reference does.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps
        ).type_as(x)


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        q, k, v = self.to_qkv(x).view(b, s, 3, self.num_heads, c // self.num_heads).unbind(2)
        # The shared kernel choice (sdpa / flash-attn), as the reference routes CLIP through flash_attention.
        return self.proj(attention(q, k, v).reshape(b, s, c))


class _Block(nn.Module):
    def __init__(self, cfg: CLIPVisualConfig) -> None:
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.norm1 = _LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = _SelfAttention(cfg.dim, cfg.num_heads)
        self.norm2 = _LayerNorm(cfg.dim, eps=cfg.norm_eps)
        # Indices 0 and 2 are the released key names (mlp.0 / mlp.2); exact-erf GELU.
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CLIPVisual(nn.Module):
    """ViT visual tower (pre-norm, class token, no patch bias); keys = released ``visual.*`` minus prefix."""

    def __init__(self, cfg: CLIPVisualConfig = VIT_H_14) -> None:
        super().__init__()
        self.cfg = cfg
        grid = cfg.image_size // cfg.patch_size
        # Parameters first, then modules: this reproduces the released key order.
        self.cls_embedding = nn.Parameter(torch.empty(1, 1, cfg.dim))
        self.pos_embedding = nn.Parameter(torch.empty(1, grid * grid + 1, cfg.dim))
        self.head = nn.Parameter(torch.empty(cfg.dim, cfg.out_dim))
        self.patch_embedding = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.pre_norm = _LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.transformer = nn.Sequential(*[_Block(cfg) for _ in range(cfg.num_layers)])
        self.post_norm = _LayerNorm(cfg.dim, eps=cfg.norm_eps)
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    def reset_parameters(self) -> None:
        gain = self.cfg.dim**-0.5
        with torch.no_grad():
            for p in (self.cls_embedding, self.pos_embedding, self.head):
                p.normal_(0.0, gain)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised pixels [B, 3, S, S] -> tokens entering block 0 [B, 257, dim] (after pre_norm)."""
        size = self.cfg.image_size
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != (size, size):
            raise ValueError(f"expected preprocessed pixels [B, 3, {size}, {size}], got {tuple(pixels.shape)}")
        weight = self.patch_embedding.weight
        x = self.patch_embedding(pixels.to(weight.device, weight.dtype)).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_embedding.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pre_norm(x + self.pos_embedding)

    def forward(self, pixels: torch.Tensor, use_31_block: bool = True) -> torch.Tensor:
        """Preprocessed pixels -> block outputs [B, 257, dim] without post_norm.

        ``use_31_block`` (FlashTalk's setting) drops the last block, as the reference does.
        """
        x = self.embed(pixels)
        blocks = self.transformer[:-1] if use_31_block else self.transformer
        for block in cast(nn.ModuleList, blocks):
            x = block(x)
        return x

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """FlashTalk's ``clip_fea``: images in [-1, 1] ([B,3,H,W] or [B,3,T,H,W]) -> [B*T, 257, dim]."""
        images = images.to(self.patch_embedding.weight.device)
        return self(preprocess_images(images, self.cfg.image_size), use_31_block=True)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP image embeddings [N, out_dim] for cosine similarity (dot product).

        ``images``: uint8 frames [N, H, W, 3] (the renderer's frame layout) or float [N, 3, H, W]
        in [-1, 1]. Runs all blocks, then ``post_norm`` on the class token and ``head``.
        """
        images = images.to(self.patch_embedding.weight.device)
        if images.dtype == torch.uint8:
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"uint8 frames must be [N, H, W, 3], got {tuple(images.shape)}")
            images = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        x = self(preprocess_images(images, self.cfg.image_size), use_31_block=False)
        emb = self.post_norm(x[:, 0]) @ self.head
        return F.normalize(emb.float(), dim=-1)
