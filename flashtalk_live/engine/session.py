"""The avatar session: everything derived once from the reference image and the prompt, reused by every chunk.

Image -> PIL-compatible bilinear resize to cover the profile geometry (ceil of the larger scale) and a centre
crop (torchvision offsets), as the reference's `resize_and_centercrop`; then CLIP features of that image,
the 20-channel `y` conditioning (4 mask channels + the VAE latents of [image, frame_num - 1 black frames]),
the first motion latent (the image alone) and the umT5 text context.  The text context is cached on disk,
keyed by the prompt and the identity of the text-encoder files, so the 11 GB encoder need not stay loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from flashtalk_live.engine.profile import Profile
from flashtalk_live.model.colour import LabStats, lab_stats
from safetensors.torch import load_file, save_file

_PRECISION_BITS = 32 - 8 - 2  # PIL's fixed-point resampling precision for 8-bit images


# ------------------------------------------------------------------------------------------ image geometry


def _pil_bilinear_coeffs(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel: the first input index and fixed-point weights of PIL's antialiased triangle filter."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    starts = np.zeros(out_size, np.int64)
    weights = np.zeros((out_size, ksize), np.int64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        ss = 1.0 / filterscale
        taps = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * ss)) for x in range(xmax)]
        total = 0.0
        for v in taps:  # sequential sum, as PIL (numpy's pairwise sum rounds differently)
            total += v
        k = np.array([v / total for v in taps]) if total else np.array(taps)
        fixed = np.where(k >= 0, k * (1 << _PRECISION_BITS) + 0.5, k * (1 << _PRECISION_BITS) - 0.5).astype(np.int64)
        starts[xx] = xmin
        weights[xx, :xmax] = fixed
    return starts, weights


def _resample_axis(img: np.ndarray, out_size: int, axis: int) -> np.ndarray:
    in_size = img.shape[axis]
    if in_size == out_size:
        return img
    starts, weights = _pil_bilinear_coeffs(in_size, out_size)
    src = np.moveaxis(img.astype(np.int64), axis, 0)
    ksize = weights.shape[1]
    padded = np.concatenate([src, np.zeros((ksize,) + src.shape[1:], np.int64)], axis=0)
    idx = starts[:, None] + np.arange(ksize)[None, :]  # [out, k]
    acc = (padded[idx] * weights.reshape(weights.shape + (1,) * (src.ndim - 1))).sum(axis=1)
    acc = (acc + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS
    out = np.clip(acc, 0, 255).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


def pil_bilinear_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 [H, W, C] -> [height, width, C], the same numbers as PIL's Image.resize(..., BILINEAR)."""
    out = _resample_axis(img, width, axis=1)  # PIL runs the horizontal pass first
    return _resample_axis(out, height, axis=0)


def fit_reference(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The reference's resize_and_centercrop: cover (ceil of max scale) with bilinear, then centre-crop."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        shape = getattr(image, "shape", None)
        raise ValueError(f"reference image must be uint8 [H, W, 3] RGB, got {getattr(image, 'dtype', type(image))} {shape}")
    image = image[..., :3]
    h, w = image.shape[:2]
    if h < 1 or w < 1:
        raise ValueError(f"reference image is empty: {image.shape}")
    scale = max(height / h, width / w)
    fh, fw = math.ceil(scale * h), math.ceil(scale * w)
    resized = pil_bilinear_resize(np.ascontiguousarray(image), fw, fh)
    top, left = int(round((fh - height) / 2.0)), int(round((fw - width) / 2.0))
    return np.ascontiguousarray(resized[top : top + height, left : left + width])


def image_to_tensor(image_u8: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float32 [1, 3, 1, H, W] in [-1, 1] as (x/255 - 0.5) * 2."""
    x = torch.from_numpy(np.ascontiguousarray(image_u8)).permute(2, 0, 1).float()
    return ((x / 255 - 0.5) * 2)[None, :, None]


def y_mask(frame_num: int, h: int, w: int, dtype: torch.dtype = torch.float32,
           device: torch.device | str = "cpu") -> torch.Tensor:
    """The 4 mask channels of y: [4, T_lat, h, w], 1 on latent frame 0 (frame 0 repeated x4, viewed as [T, 4])."""
    msk = torch.ones(1, frame_num, h, w, dtype=dtype, device=device)
    msk[:, 1:] = 0
    msk = torch.cat([msk[:, :1].repeat_interleave(4, dim=1), msk[:, 1:]], dim=1)
    return msk.view(1, msk.shape[1] // 4, 4, h, w).transpose(1, 2)[0]


# ------------------------------------------------------------------------------------------ text cache


class TextEncoder(Protocol):
    """Prompt -> unpadded umT5 output [L, text_dim]; `identity` names the model files (the cache key)."""

    identity: str

    def __call__(self, prompt: str) -> torch.Tensor: ...


def file_identity(*paths: str | os.PathLike[str]) -> str:
    """A cheap identity of model files: resolved path, size and mtime of each (files or folders' files)."""
    parts = []
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            parts.append(f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


class CachedTextEncoder:
    """Wraps a TextEncoder with an on-disk cache: <dir>/<sha256(prompt, identity)>.safetensors."""

    def __init__(self, encoder: TextEncoder | None, cache_dir: str | os.PathLike[str], identity: str | None = None) -> None:
        if encoder is None and identity is None:
            raise ValueError("a text cache without an encoder needs the model identity")
        self.encoder = encoder
        self.identity = identity if identity is not None else encoder.identity
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0

    def key(self, prompt: str) -> str:
        return hashlib.sha256(json.dumps([prompt, self.identity]).encode()).hexdigest()

    def path(self, prompt: str) -> Path:
        return self.cache_dir / f"{self.key(prompt)}.safetensors"

    def __call__(self, prompt: str) -> torch.Tensor:
        path = self.path(prompt)
        if path.is_file():
            try:
                data = load_file(str(path))
                self.hits += 1
                return data["context"]
            except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed, never fatal
                path.unlink(missing_ok=True)
        if self.encoder is None:
            raise RuntimeError(f"prompt not in the text cache {self.cache_dir} and no text encoder is available")
        context = self.encoder(prompt).detach().to("cpu").contiguous()
        self.misses += 1
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
        os.close(fd)
        try:
            save_file({"context": context}, tmp, metadata={"prompt": prompt, "identity": self.identity})
            os.replace(tmp, path)  # atomic: a crash never leaves a half-written entry under the real name
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return context


# ------------------------------------------------------------------------------------------ the session


@dataclass
class AvatarSession:
    """One reference image + prompt, prepared for a profile. Tensors live on the engine's device."""

    profile: Profile
    prompt: str
    image_u8: np.ndarray  # [H, W, 3] at the profile geometry
    cond_image: torch.Tensor  # [1, 3, 1, H, W] in [-1, 1], engine dtype
    clip_fea: torch.Tensor  # [1, 257, clip_dim]
    y: torch.Tensor  # [20, T_lat, h, w]
    motion0: torch.Tensor  # [16, 1, h, w]: the image's latent, chunk 0's motion context
    context: torch.Tensor  # [L, text_dim] unpadded text context
    ref_lab: LabStats  # Lab statistics of the reference (colour drift)
    ref_identity: torch.Tensor | None  # unit CLIP image embedding of the reference (identity drift)
    key: str  # hash of image bytes + prompt + profile geometry

    def matches(self, image_u8: np.ndarray, prompt: str, profile: Profile) -> bool:
        return self.key == session_key(image_u8, prompt, profile)


def session_key(image: np.ndarray, prompt: str, profile: Profile) -> str:
    h = hashlib.sha256()
    h.update(str((image.shape, str(image.dtype), prompt, profile.height, profile.width, profile.frame_num)).encode())
    h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


@torch.no_grad()
def prepare_session(
    profile: Profile,
    image: np.ndarray,
    prompt: str,
    *,
    vae: torch.nn.Module,
    clip: torch.nn.Module | None,
    text: Callable[[str], torch.Tensor] | None = None,
    context: torch.Tensor | None = None,
    clip_fea: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> AvatarSession:
    """Build an AvatarSession. `context` / `clip_fea` given directly skip the text encoder / CLIP (fixtures)."""
    device = torch.device(device)
    fitted = fit_reference(image, profile.height, profile.width)
    cond = image_to_tensor(fitted).to(device=device, dtype=dtype)
    if clip_fea is None:
        if clip is None:
            raise ValueError("no CLIP model and no clip_fea given")
        clip_fea = clip.encode(cond[:, :, -1:])
    clip_fea = clip_fea.to(device=device, dtype=dtype)
    if context is None:
        if text is None:
            raise ValueError("no text encoder and no context given")
        context = text(prompt)
    context = context.to(device=device, dtype=dtype)
    if context.ndim != 2:
        raise ValueError(f"text context must be [L, text_dim], got {tuple(context.shape)}")
    vae_dtype = next(vae.parameters()).dtype
    h, w = profile.latent_hw
    video = torch.cat([cond, cond.new_zeros(1, 3, profile.frame_num - 1, profile.height, profile.width)], dim=2)
    y_lat = vae.encode(video.to(vae_dtype))[0]
    y = torch.cat([y_mask(profile.frame_num, h, w, dtype=y_lat.dtype, device=device), y_lat]).to(dtype)
    motion0 = vae.encode(cond.to(vae_dtype))[0]
    ref_identity = None
    if clip is not None and hasattr(clip, "image_features"):
        ref_identity = clip.image_features(cond[:, :, 0])
    return AvatarSession(
        profile=profile, prompt=prompt, image_u8=fitted, cond_image=cond, clip_fea=clip_fea, y=y, motion0=motion0,
        context=context, ref_lab=lab_stats(cond.float()), ref_identity=ref_identity,
        key=session_key(image, prompt, profile),
    )
