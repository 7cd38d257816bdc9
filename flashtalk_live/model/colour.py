"""Colour correction against the reference image in CIE Lab, and the Lab colour distance used as drift metric.

`match_and_blend_colors` is the reference's `match_and_blend_colors_torch`: every frame's per-channel Lab
mean and (population) std over H, W are moved onto the reference image's, and the result is blended
with the original at `strength`.  `lab_stats` / `lab_distance` measure the same statistics, so the
distance is exactly what a full-strength correction drives to zero (up to the final RGB clamp).
Video is [B, 3, T, H, W] in [-1, 1]; the reference image is [B or 1, 3, 1, H', W'].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .transfer import device_constant

__all__ = [
    "LabStats",
    "lab_distance",
    "lab_stats",
    "lab_to_rgb",
    "match_and_blend_colors",
    "rgb_to_lab",
]

# sRGB (D65) <-> XYZ matrices and the D65 white point, as in the reference.
_XYZ_FROM_RGB = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_RGB_FROM_XYZ = (
    (3.2404542, -1.5371385, -0.4985314),
    (-0.9692660, 1.8760108, 0.0415560),
    (0.0556434, -0.2040259, 1.0572252),
)
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_EPSILON = 0.008856
_KAPPA = 903.3


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], channels last [..., 3] -> CIE Lab [..., 3] (D65; XYZ/white clamped to [1e-8, 1])."""
    _check_last3(rgb, "rgb_to_lab input")
    linear = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = device_constant(_XYZ_FROM_RGB, rgb.dtype, rgb.device)
    xyz = (linear.reshape(-1, 3) @ m.T).reshape(linear.shape)
    white = device_constant(_WHITE_D65, rgb.dtype, rgb.device)
    xyz = torch.clamp(xyz / white, 1e-8, 1.0)
    f = torch.where(xyz > _EPSILON, xyz ** (1 / 3), (_KAPPA * xyz + 16) / 116)
    lightness = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return torch.stack([lightness, a, b], dim=-1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab [..., 3] -> sRGB in [0, 1] (gamma 1/2.4, clamped), channels last."""
    _check_last3(lab, "lab_to_rgb input")
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    f_y = (lightness + 16) / 116
    f_x = a / 500 + f_y
    f_z = f_y - b / 200
    x = torch.where(f_x**3 > _EPSILON, f_x**3, (116 * f_x - 16) / _KAPPA)
    y = torch.where(lightness > _KAPPA * _EPSILON, ((lightness + 16) / 116) ** 3, lightness / _KAPPA)
    z = torch.where(f_z**3 > _EPSILON, f_z**3, (116 * f_z - 16) / _KAPPA)
    white = device_constant(_WHITE_D65, lab.dtype, lab.device)
    xyz = torch.stack([x, y, z], dim=-1) * white
    m = device_constant(_RGB_FROM_XYZ, lab.dtype, lab.device)
    linear = (xyz.reshape(-1, 3) @ m.T).reshape(xyz.shape)
    rgb = torch.where(linear > 0.0031308, 1.055 * (linear ** (1 / 2.4)) - 0.055, 12.92 * linear)
    return torch.clamp(rgb, 0.0, 1.0)


@dataclass(frozen=True)
class LabStats:
    """Per-frame Lab statistics over H, W: `mean`, `std` (population) as [B, T, 3] (L, a, b)."""

    mean: torch.Tensor
    std: torch.Tensor


def _video_lab(video: torch.Tensor, name: str, dtype: torch.dtype | None) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> Lab [B, T, H, W, 3]."""
    _check_video(video, name)
    if dtype is not None:
        video = video.to(dtype)
    return rgb_to_lab(((video + 1.0) / 2.0).permute(0, 2, 3, 4, 1))


def _stats_of_lab(lab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lab [B, T, H, W, 3] -> (mean, std) each [B, T, 1, 1, 3]."""
    return lab.mean(dim=[2, 3], keepdim=True), lab.std(dim=[2, 3], keepdim=True, unbiased=False)


def lab_stats(image: torch.Tensor, *, compute_dtype: torch.dtype | None = None) -> LabStats:
    """Lab mean/std per frame of video or image [B, 3, T, H, W] in [-1, 1] -> LabStats ([B, T, 3] each)."""
    mean, std = _stats_of_lab(_video_lab(image, "lab_stats image", compute_dtype))
    return LabStats(mean=mean[:, :, 0, 0, :], std=std[:, :, 0, 0, :])


def lab_distance(
    frames: torch.Tensor, reference: torch.Tensor | LabStats, *, compute_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Colour distance of each frame to the reference image: [B, T], in Lab units.

    sqrt(|mean_f - mean_ref|^2 + |std_f - std_ref|^2) over the L, a, b channels: the first term is the
    CIE76 delta-E of the average colours, the second the mismatch of contrast per channel.  It is 0 when
    the frame has the reference's statistics, which is what `match_and_blend_colors(..., 1.0)` imposes.
    `reference` is an image [B or 1, 3, 1, H', W'] or its precomputed `lab_stats`.
    """
    f = lab_stats(frames, compute_dtype=compute_dtype)
    r = _reference_stats(reference, f.mean.shape[0], compute_dtype)
    mean_ref, std_ref = r.mean.to(f.mean.dtype), r.std.to(f.std.dtype)
    d2 = (f.mean - mean_ref).square().sum(-1) + (f.std - std_ref).square().sum(-1)
    return d2.sqrt()


def match_and_blend_colors(
    source: torch.Tensor,
    reference: torch.Tensor | LabStats,
    strength: float,
    *,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Colour-correct video [B, 3, T, H, W] in [-1, 1] towards the reference; returns the same shape/dtype.

    strength 0 returns a copy; 1 replaces each frame by its corrected version.  The computation runs in
    the video's dtype unless `compute_dtype` is given (the reference runs it in the video dtype, bf16 in
    production).  `reference` is an image [B or 1, 3, 1, H', W'] in [-1, 1] or its `lab_stats`.
    """
    if not isinstance(strength, (int, float)) or math.isnan(strength) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"colour correction strength must be a number in [0, 1], got {strength!r}")
    _check_video(source, "colour correction source")
    if strength == 0.0:
        _reference_stats(reference, source.shape[0], compute_dtype)  # still reject a bad reference
        return source.clone()
    out_dtype = source.dtype
    work = source if compute_dtype is None else source.to(compute_dtype)
    source_rgb = ((work + 1.0) / 2.0).permute(0, 2, 3, 4, 1)
    source_lab = rgb_to_lab(source_rgb)
    source_mean, source_std = _stats_of_lab(source_lab)
    ref = _reference_stats(reference, source.shape[0], work.dtype if compute_dtype is None else compute_dtype)
    ref_mean = ref.mean[:, :, None, None, :].to(device=work.device, dtype=work.dtype)
    ref_std = ref.std[:, :, None, None, :].to(device=work.device, dtype=work.dtype)
    # A flat channel has no contrast to rescale: divide by 1 instead of ~0.
    source_std_safe = torch.where(source_std < 1e-8, torch.ones_like(source_std), source_std)
    corrected_lab = (source_lab - source_mean) * (ref_std / source_std_safe) + ref_mean
    corrected_rgb = lab_to_rgb(corrected_lab)
    blended = (1 - strength) * source_rgb + strength * corrected_rgb
    out = blended.permute(0, 4, 1, 2, 3) * 2.0 - 1.0
    return out.contiguous().to(dtype=out_dtype)


# --------------------------------------------------------------------------------------------------


def _reference_stats(reference: torch.Tensor | LabStats, batch: int, dtype: torch.dtype | None) -> LabStats:
    if isinstance(reference, LabStats):
        stats = reference
        if stats.mean.ndim != 3 or stats.mean.shape[1:] != (1, 3) or stats.std.shape != stats.mean.shape:
            raise ValueError(
                f"reference LabStats must be of one image ([B, 1, 3]), got mean {tuple(stats.mean.shape)}, "
                f"std {tuple(stats.std.shape)}"
            )
    else:
        _check_video(reference, "colour reference image")
        if reference.shape[2] != 1:
            raise ValueError(f"colour reference must be one image [B, 3, 1, H, W], got {tuple(reference.shape)}")
        stats = lab_stats(reference, compute_dtype=dtype)
    if stats.mean.shape[0] not in (1, batch):
        raise ValueError(f"colour reference batch {stats.mean.shape[0]} does not match the video batch {batch}")
    return stats


def _check_video(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be [B, 3, T, H, W] in [-1, 1], got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {x.dtype}")
    if min(x.shape[2:]) < 1:
        raise ValueError(f"{name} is empty: {tuple(x.shape)}")


def _check_last3(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[-1] != 3 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating tensor [..., 3], got {shape}")
