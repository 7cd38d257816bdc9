"""umT5-XXL text encoder (encoder only) with the released ``models_t5_umt5-xxl-enc-bf16.pth`` key layout.

T5 specifics kept exactly: RMS layer norm (no mean, no bias, weight applied after), attention without
1/sqrt(d) scaling, one bidirectional relative-position bucket table per layer (32 buckets, max
distance 128), gated tanh-GELU FFN ``fc2(fc1(x) * gelu(gate(x)))``, padded keys masked with the
dtype's most negative value. Tokenisation lives in :mod:`flashtalk_live.model.text`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["T5Config", "T5Encoder", "UMT5_XXL", "relative_position_bucket", "trim_to_mask"]


@dataclass(frozen=True)
class T5Config:
    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.dim_attn % self.num_heads:
            raise ValueError(f"dim_attn {self.dim_attn} is not a multiple of num_heads {self.num_heads}")
        if self.num_buckets < 4 or self.num_buckets % 2:
            raise ValueError("num_buckets must be an even number >= 4")


UMT5_XXL = T5Config()


def relative_position_bucket(rel_pos: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Bidirectional T5 bucket of ``key_pos - query_pos``: half the buckets per direction,
    exact below ``num_buckets // 4``, logarithmic up to ``max_distance``, clamped after."""
    half = num_buckets // 2
    buckets = (rel_pos > 0).long() * half
    dist = rel_pos.abs()
    max_exact = half // 2
    # clamp_min(1) only avoids log(0); those positions take the exact branch anyway.
    large = max_exact + (
        torch.log(dist.clamp_min(1).float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    large = large.clamp_max(half - 1)
    return buckets + torch.where(dist < max_exact, dist, large)


class _RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32; back to the weight dtype only for half types (as the reference).
        y = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            y = y.type_as(self.weight)
        return self.weight * y


class _RelativeEmbedding(nn.Module):
    def __init__(self, num_buckets: int, num_heads: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        device = self.embedding.weight.device
        rel = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
        bias = self.embedding(relative_position_bucket(rel, self.num_buckets, self.max_distance))
        return bias.permute(2, 0, 1).unsqueeze(0).contiguous()  # [1, heads, lq, lk]


class _Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        n = self.num_heads
        q, k, v = (proj(x).view(b, s, n, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        # T5 has no 1/sqrt(d): scale=1; the bias carries positions and the key mask.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=1.0)
        return self.o(out.transpose(1, 2).reshape(b, s, -1))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, dim_ffn: int) -> None:
        super().__init__()
        # gate.0: the released key name (the reference wraps the gate Linear and its GELU).
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), nn.GELU(approximate="tanh"))
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


def _fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = x.clamp(-limit, limit)
    return x


class _Block(nn.Module):
    def __init__(self, cfg: T5Config) -> None:
        super().__init__()
        self.norm1 = _RMSNorm(cfg.dim, cfg.eps)
        self.attn = _Attention(cfg.dim, cfg.dim_attn, cfg.num_heads)
        self.norm2 = _RMSNorm(cfg.dim, cfg.eps)
        self.ffn = _FeedForward(cfg.dim, cfg.dim_ffn)
        self.pos_embedding = _RelativeEmbedding(cfg.num_buckets, cfg.num_heads, cfg.max_distance)

    def position_bias(self, length: int) -> torch.Tensor:
        return self.pos_embedding(length, length)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        bias = self.position_bias(x.shape[1]).to(x.dtype).expand(x.shape[0], -1, -1, -1)
        if key_mask is not None:
            bias = bias.masked_fill(key_mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        x = _fp16_clamp(x + self.attn(self.norm1(x), bias))
        return _fp16_clamp(x + self.ffn(self.norm2(x)))


class T5Encoder(nn.Module):
    """umT5 encoder: ids [B, L] (+ mask [B, L], 1 = token) -> hidden states [B, L, dim]."""

    def __init__(self, cfg: T5Config = UMT5_XXL) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.blocks = nn.ModuleList([_Block(cfg) for _ in range(cfg.num_layers)])
        self.norm = _RMSNorm(cfg.dim, cfg.eps)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"ids must be an integer tensor [B, L], got {ids.dtype} {tuple(ids.shape)}")
        if mask is not None and mask.shape != ids.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} differs from ids shape {tuple(ids.shape)}")
        x = self.token_embedding(ids)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """The reference's text context: encoder output trimmed to each sample's true length. Positions past the
        longest true length are cut before the forward (right padding): pads are masked out of every attention and
        the rest is per token, so the rows kept are the same and the 512-token padding costs no compute."""
        n = max(1, int(mask.gt(0).sum(dim=1).max()))
        ids, mask = ids[:, :n], mask[:, :n]
        return trim_to_mask(self(ids, mask), mask)


def trim_to_mask(hidden: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """[B, L, C] + mask [B, L] -> list of [len_i, C] where len_i = number of mask entries > 0."""
    lengths = mask.gt(0).sum(dim=1).tolist()
    return [h[:n] for h, n in zip(hidden, lengths)]
