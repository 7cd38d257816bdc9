"""Scaled dot-product attention on [B, L, H, D] tensors: torch SDPA by default, flash-attn when chosen.

Every attention in the model family goes through `attention()`, so the kernel is chosen in one place
(`settings.model.attention` -> `set_default_backend`). No xformers. `cudnn` is torch SDPA with cuDNN's fused
attention put first (torch's default order tries its FlashAttention-2 kernel first, which on Hopper runs well below
cuDNN's); where cuDNN cannot take a call (CPU, a mask) SDPA's usual order applies. On torch 2.11 (H200) the
default order already picks cuDNN, so there `cudnn` changes nothing (benchmarks/attention_gpu.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

Backend = Literal["sdpa", "cudnn", "flash"]
BACKENDS: tuple[str, ...] = ("sdpa", "cudnn", "flash")
_CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                SDPBackend.MATH]

_default_backend: str = "sdpa"
_flash_impl: tuple[str, Any, Any] | None = None  # (module name, flash_attn_func, flash_attn_varlen_func)
_BF16_ONLY = frozenset({"fa3_fwd_interface"})  # built without fp16 kernels: fp16 inputs (CLIP on CUDA) run in bf16


class AttentionBackendError(RuntimeError):
    """The chosen attention backend is unknown or not installed."""


def _load_flash() -> tuple[str, Any, Any]:
    """FlashAttention-3 (flash_attn_interface, Hopper; or the forward-only wheel fa3-fwd) if present, else
    FlashAttention-2 (flash_attn)."""
    global _flash_impl
    if _flash_impl is not None:
        return _flash_impl
    errors = []
    for name in ("flash_attn_interface", "fa3_fwd_interface", "flash_attn"):
        try:
            mod = importlib.import_module(name)
            _flash_impl = (name, mod.flash_attn_func, mod.flash_attn_varlen_func)
            return _flash_impl
        except Exception as e:  # ImportError, or a broken build raising OSError/RuntimeError on import
            errors.append(f"{name}: {type(e).__name__}: {e}")
    raise AttentionBackendError(
        "attention backend 'flash' was chosen but flash-attn is not usable "
        f"({'; '.join(errors)}). Install it (pip install 'flashtalk-live[flash]') or set model.attention = \"sdpa\"."
    )


def flash_available() -> bool:
    """True when flash-attn (2 or 3) imports."""
    try:
        _load_flash()
        return True
    except AttentionBackendError:
        return False


def set_default_backend(backend: str) -> None:
    """Set the backend used when `attention(backend=None)`; fails now, not at the first forward, if unusable."""
    global _default_backend
    if backend not in BACKENDS:
        raise AttentionBackendError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    if backend == "flash":
        _load_flash()
    _default_backend = backend


def get_default_backend() -> str:
    return _default_backend


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention expects [B, L, H, D] tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch, heads or head_dim")


def _lens_list(k_lens: torch.Tensor | Sequence[int] | None, b: int, lk: int) -> list[int] | None:
    if k_lens is None:
        return None
    lens = [int(n) for n in (k_lens.tolist() if isinstance(k_lens, torch.Tensor) else k_lens)]
    if len(lens) != b:
        raise ValueError(f"k_lens has {len(lens)} entries for a batch of {b}")
    for n in lens:
        if not 0 < n <= lk:
            raise ValueError(f"k_lens entry {n} outside 1..{lk}")
    return lens


def _sdpa(q, k, v, lens, scale):
    # SDPA wants [B, H, L, D].
    if lens is None:
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
        return out.transpose(1, 2)
    if len(set(lens)) == 1:
        # One length for all: slice the keys, so fused kernels stay available (a mask would rule out flash).
        n = lens[0]
        return _sdpa(q, k[:, :n], v[:, :n], None, scale)
    mask = torch.arange(k.shape[1], device=k.device)[None, :] < torch.tensor(lens, device=k.device)[:, None]
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask[:, None, None, :], scale=scale
    )
    return out.transpose(1, 2)


def flash_dtype(module: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype flash-attn `module` computes a `dtype` input in: fp16 or bf16 as given, else bf16 (flash-attn has
    no other kernels); bf16 for every input where the build has no fp16 kernels."""
    if dtype == torch.float16 and module not in _BF16_ONLY:
        return dtype
    return torch.bfloat16


def _flash(q, k, v, lens, scale):
    name, func, varlen = _load_flash()
    if q.device.type != "cuda":
        raise AttentionBackendError(f"attention backend 'flash' needs CUDA tensors, got {q.device}")
    dtype = q.dtype
    half = flash_dtype(name, dtype)
    q, k, v = q.to(half), k.to(half), v.to(half)
    kw: dict[str, Any] = {"softmax_scale": scale, "causal": False}
    if lens is None or len(set(lens)) == 1:
        if lens is not None:
            k, v = k[:, : lens[0]], v[:, : lens[0]]
        out = func(q, k, v, **kw)
    else:
        b, lq = q.shape[:2]
        ks = torch.tensor([0] + lens, device=q.device, dtype=torch.int32).cumsum(0, dtype=torch.int32)
        qs = torch.arange(0, (b + 1) * lq, lq, device=q.device, dtype=torch.int32)
        kk = torch.cat([k[i, :n] for i, n in enumerate(lens)])
        vv = torch.cat([v[i, :n] for i, n in enumerate(lens)])
        out = varlen(q.flatten(0, 1), kk, vv, qs, ks, lq, max(lens), **kw)
    if isinstance(out, tuple):  # some FA3 builds return (out, softmax_lse)
        out = out[0]
    if lens is not None and len(set(lens)) > 1:
        out = out.unflatten(0, (q.shape[0], q.shape[1]))
    return out.to(dtype)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    k_lens: torch.Tensor | Sequence[int] | None = None,
    backend: str | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Non-causal attention. q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D] in q's dtype.

    k_lens: per sample, only the first k_lens[i] keys/values are attended to (None: all).
    q and k are cast to v's dtype first (as the reference does). scale defaults to 1/sqrt(D).
    backend None uses the module default (`set_default_backend`).
    """
    _check(q, k, v)
    backend = _default_backend if backend is None else backend
    if backend not in BACKENDS:
        raise AttentionBackendError(f"unknown attention backend {backend!r}; expected one of {BACKENDS}")
    out_dtype = q.dtype
    q, k = q.to(v.dtype), k.to(v.dtype)
    lens = _lens_list(k_lens, q.shape[0], k.shape[1])
    if backend == "flash":
        out = _flash(q, k, v, lens, scale)
    elif backend == "cudnn":
        with sdpa_kernel(_CUDNN_FIRST, set_priority=True):
            out = _sdpa(q, k, v, lens, scale)
    else:
        out = _sdpa(q, k, v, lens, scale)
    return out.to(out_dtype)
