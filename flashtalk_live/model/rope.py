"""3-D rotary position embedding of the Wan DiT: head_dim split into time/height/width bands (44/42/42 for 128).

Positions are 0-based latent-grid indices within one chunk; a token index is frame-major (f, h, w).
Tokens past the grid (sequence padding) get the identity rotation, as in the reference.
"""

from __future__ import annotations

import torch


def rope_bands(head_dim: int) -> tuple[int, int, int]:
    """Channels of head_dim given to (time, height, width): d - 4*(d//6), 2*(d//6), 2*(d//6)."""
    if head_dim % 2 or head_dim < 6:
        raise ValueError(f"RoPE needs an even head_dim >= 6, got {head_dim}")
    s = 2 * (head_dim // 6)
    return head_dim - 2 * s, s, s


def _inv_freq(band: int, theta: float) -> torch.Tensor:
    return 1.0 / torch.pow(theta, torch.arange(0, band, 2, dtype=torch.float64) / band)


def rope_cos_sin(
    grid: tuple[int, int, int],
    head_dim: int,
    start: int = 0,
    length: int | None = None,
    *,
    theta: float = 10000.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, float32 [length, head_dim // 2], for global token indices start .. start+length-1.

    Angles are computed in float64 (as the reference's complex128 table) and rounded once to float32.
    """
    f, h, w = grid
    n = f * h * w
    if length is None:
        length = n - start
    if start < 0 or length < 0:
        raise ValueError(f"bad token range start={start} length={length}")
    idx = torch.arange(start, start + length, dtype=torch.int64)
    valid = idx < n
    ci = torch.where(valid, idx, torch.zeros_like(idx))
    fi, hi, wi = ci // (h * w), (ci // w) % h, ci % w
    bt, bh, bw = rope_bands(head_dim)
    ang = torch.cat(
        [
            fi[:, None].double() * _inv_freq(bt, theta)[None],
            hi[:, None].double() * _inv_freq(bh, theta)[None],
            wi[:, None].double() * _inv_freq(bw, theta)[None],
        ],
        dim=1,
    )
    ang = ang * valid[:, None]  # padding: angle 0, identity rotation
    return ang.cos().float().to(device), ang.sin().float().to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x [B, L, H, D] by the angles of each token; computed in float32."""
    b, l, h, d = x.shape
    if cos.shape != (l, d // 2):
        raise ValueError(f"rope table {tuple(cos.shape)} does not fit x {tuple(x.shape)}")
    xf = x.float().unflatten(-1, (d // 2, 2))
    xr, xi = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack([xr * c - xi * s, xr * s + xi * c], dim=-1).flatten(-2)
    return out.to(x.dtype)
