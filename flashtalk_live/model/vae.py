"""The Wan2.1 causal 3-D video VAE (z16, 4x8x8) in pure PyTorch, with explicit streaming caches.

`WanVAE` has exactly the state-dict keys of the released `Wan2.1_VAE.pth` (the reference's inner
`WanVAE_`), so that file loads strictly into it.  The reference encodes the first frame alone and then
groups of 4 frames, and decodes one latent frame at a time; every op is causal in time, so any split of
the clip into passes gives the same result as long as the causal history is carried between passes.
Here a pass may hold any number of latent frames (the default: the whole call in one pass, which keeps
the GPU busy; `latents_per_pass=1` is the reference's frame-by-frame loop).  Between passes every causal
convolution keeps the last 2 frames of its input in a `VAECache`.  By default each `encode`/`decode`
call uses a fresh cache, exactly like the reference (which clears its cache at the start and end of
every call); a streaming caller may instead pass its own cache, keep it across calls and `reset()` it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LATENT_MEAN",
    "LATENT_STD",
    "VAECache",
    "VAECacheError",
    "VAEConfig",
    "WanVAE",
    "expected_state_dict_shapes",
]

# Per-channel statistics of the released VAE's latent space (the reference's `WanVAE.mean` / `std`).
LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

_HISTORY = 2  # frames of causal context a kernel-3 temporal conv needs (the reference's CACHE_T)


@dataclass(frozen=True)
class VAEConfig:
    """Constructor arguments of the VAE; defaults are the released Wan2.1 values."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    dropout: float = 0.0
    latent_mean: tuple[float, ...] = LATENT_MEAN
    latent_std: tuple[float, ...] = LATENT_STD

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.z_dim <= 0 or self.num_res_blocks < 0:
            raise ValueError(f"VAEConfig: dim, z_dim must be > 0 and num_res_blocks >= 0, got {self}")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"VAEConfig: temporal_downsample needs {len(self.dim_mult) - 1} entries "
                f"(one per down-sampling stage), got {len(self.temporal_downsample)}"
            )
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            raise ValueError(f"VAEConfig: latent_mean/latent_std need z_dim={self.z_dim} entries")
        if any(s <= 0 for s in self.latent_std):
            raise ValueError("VAEConfig: latent_std entries must be > 0")
        # Stored as tuples so the config stays hashable whatever sequence type was given.
        for name in ("dim_mult", "attn_scales", "temporal_downsample", "latent_mean", "latent_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def released(cls) -> VAEConfig:
        """The Wan2.1 VAE as shipped in `Wan2.1_VAE.pth` (126,892,531 parameters)."""
        return cls()

    @classmethod
    def tiny(cls) -> VAEConfig:
        """The parity fixture's VAE: released structure with dim 6 (529,201 parameters)."""
        return cls(dim=6)

    @classmethod
    def from_reference_kwargs(cls, kwargs: dict[str, Any]) -> VAEConfig:
        """Build from the reference's `WanVAE_(**kwargs)` arguments (its spelling `temperal_downsample`)."""
        known = {"dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample", "dropout"}
        unknown = set(kwargs) - known
        if unknown:
            raise ValueError(f"VAEConfig: unknown reference arguments {sorted(unknown)}")
        args = dict(kwargs)
        if "temperal_downsample" in args:
            args["temporal_downsample"] = args.pop("temperal_downsample")
        return cls(**args)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        return 2 ** len(self.temporal_downsample)

    def latent_frames(self, video_frames: int) -> int:
        """Latent frames for a causal clip of `video_frames` (1 + 4k) frames: 33 -> 9, 5 -> 2, 1 -> 1."""
        s = self.temporal_stride
        if video_frames < 1 or (video_frames - 1) % s:
            raise ValueError(f"a fresh VAE encode needs 1 + {s}k frames, got {video_frames}")
        return 1 + (video_frames - 1) // s


class VAECacheError(ValueError):
    """A `VAECache` was used with the wrong VAE direction, geometry, dtype or device."""


class _FirstFrameSkipped:
    """Marker for a temporal up-sampler that has passed its first (image) latent through unchanged."""

    def __repr__(self) -> str:
        return "<first frame skipped>"


_SKIPPED = _FirstFrameSkipped()


@dataclass(eq=False)
class VAECache:
    """Causal history of one encoder or decoder stream: one slot per cached layer.

    A slot holds None (nothing seen), a tensor with the last <= 2 input frames of that layer, or, for a
    temporal up-sampler, the marker that its first latent was passed through.  `steps` counts the latent
    frames that went through the stream (encoded or decoded).
    """

    kind: Literal["encoder", "decoder"]
    num_slots: int
    slots: list[Any] = field(init=False, repr=False)
    steps: int = field(init=False, default=0)
    _geometry: tuple[Any, ...] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in ("encoder", "decoder"):
            raise ValueError(f"VAECache kind must be 'encoder' or 'decoder', got {self.kind!r}")
        self.slots = [None] * self.num_slots

    def reset(self) -> None:
        """Forget all history: the next chunk is treated as the first frame of a new clip."""
        self.slots = [None] * self.num_slots
        self.steps = 0
        self._geometry = None

    @property
    def fresh(self) -> bool:
        return self.steps == 0

    def _check(self, kind: str, x: torch.Tensor) -> None:
        if kind != self.kind:
            raise VAECacheError(f"a {self.kind} cache was passed to the VAE {kind}")
        geometry = (x.shape[0], x.shape[1], x.shape[3], x.shape[4], x.dtype, x.device)
        if self._geometry is None:
            self._geometry = geometry
        elif geometry != self._geometry:
            raise VAECacheError(
                f"VAE {kind} cache was filled with (batch, channels, H, W, dtype, device) = "
                f"{self._geometry} but got {geometry}; call reset() before changing geometry"
            )


# --------------------------------------------------------------------------------------------------
# Building blocks.  Cached layers receive (cache, slot); slots are numbered once at construction.


def _next_history(prev: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """The last 2 frames of cat(prev, x): what the next call's causal conv needs as left context."""
    if x.shape[2] >= _HISTORY or prev is None:
        return x[:, :, -_HISTORY:].clone()
    return torch.cat([prev[:, :, -1:], x], dim=2)[:, :, -_HISTORY:].clone()


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last_3d when x is laid out that way (and it matters), else the default layout."""
    if x.ndim == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


class CausalConv3d(nn.Conv3d):
    """Conv3d padded causally in time (2p frames on the left, none on the right), 'same' in space.

    `history` (previous frames of the same stream) replaces that many of the left zero frames.  The
    spatial zero padding is left to the conv itself (no padded copy of the input); only the time axis
    is extended here, by one concatenation.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pt, ph, pw = cast(tuple[int, int, int], self.padding)  # a 3-tuple: built with an int padding
        # F.pad order: (w_left, w_right, h_left, h_right, t_left, t_right); read by parallel/vae_split.py
        self._causal_pad = (pw, pw, ph, ph, 2 * pt, 0)
        self.padding = (0, ph, pw)
        self.cache_slot: int | None = None

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(self.time_context(x, history))

    def time_context(self, x: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """x with its causal left context in time: history frames, then zeros for what is missing."""
        t_pad = self._causal_pad[4]
        if t_pad == 0:
            return x
        parts = [x]
        if history is not None:
            parts.insert(0, history.to(x.device))
            t_pad -= history.shape[2]
        if t_pad > 0:
            shape = (x.shape[0], x.shape[1], t_pad, *x.shape[3:])
            parts.insert(0, torch.zeros(shape, dtype=x.dtype, device=x.device).contiguous(memory_format=_memory_format(x)))
        return torch.cat(parts, dim=2)

    def stream(self, x: torch.Tensor, cache: VAECache | None) -> torch.Tensor:
        """Apply with the stream's history and store the new one (plain causal conv without a cache)."""
        if cache is None:
            return self(x)
        assert self.cache_slot is not None
        prev = cache.slots[self.cache_slot]
        y = self(x, prev)
        cache.slots[self.cache_slot] = _next_history(prev, x)
        return y


class RMSNorm(nn.Module):
    """L2-normalise over channels, times sqrt(C) and a learned per-channel gain (`gamma`)."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on the fresh normalised tensor: the same values, one full-size temporary fewer.
        return F.normalize(x, dim=1).mul_(self.scale).mul_(self.gamma)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # Index layout fixed by the released keys: residual.{0,2,3,6}, shortcut.
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False),
            nn.SiLU(inplace=True),  # on the norm's fresh output
            CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False),
            nn.SiLU(inplace=True),
            nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut: nn.Module = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: VAECache | None = None) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = layer.stream(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x.add_(h)  # x is the last conv's fresh output


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame separately."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: VAECache | None = None) -> torch.Tensor:
        identity = x
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = self.norm(x)
        qkv = self.to_qkv(x).reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        x = self.proj(x)
        x = x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return x + identity


def _per_frame(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D module to every frame of [B, C, T, H, W]."""
    b, c, t, h, w = x.shape
    y = fn(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class _NearestExact2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=(2.0, 2.0), mode="nearest-exact")


class Resample(nn.Module):
    """2x spatial up/down-sampling, optionally with 2x temporal up/down-sampling (causal, cached)."""

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim: int, mode: str) -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(_NearestExact2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=(2, 2)))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x: torch.Tensor, cache: VAECache | None = None) -> torch.Tensor:
        if self.mode == "upsample3d" and cache is not None:
            x = self._temporal_up(x, cache)
        x = _per_frame(self.resample, x)
        if self.mode == "downsample3d" and cache is not None:
            x = self._temporal_down(x, cache)
        return x

    def _temporal_up(self, x: torch.Tensor, cache: VAECache) -> torch.Tensor:
        slot = self.time_conv.cache_slot
        assert slot is not None
        prev = cache.slots[slot]
        image = None
        if prev is None:
            # The first latent of a stream is an image frame: it passes without temporal up-sampling, and
            # the latents after it are up-sampled as if the stream started after it (zero history).
            cache.slots[slot] = prev = _SKIPPED
            if x.shape[2] == 1:
                return x
            image, x = x[:, :, :1], x[:, :, 1:]
        history = None if prev is _SKIPPED else prev
        y = self.time_conv(x, history)
        cache.slots[slot] = _next_history(history, x)
        # Channels [0:C] give the even output frames and [C:2C] the odd ones; the image frame goes first.
        b, c2, t, h, w = y.shape
        c, first = c2 // 2, 0 if image is None else 1
        out = torch.empty((b, c, first + 2 * t, h, w), dtype=y.dtype, device=y.device,
                          memory_format=_memory_format(y))
        if image is not None:
            out[:, :, :1] = image
        out[:, :, first::2] = y[:, :c]
        out[:, :, first + 1 :: 2] = y[:, c:]
        return out

    def _temporal_down(self, x: torch.Tensor, cache: VAECache) -> torch.Tensor:
        slot = self.time_conv.cache_slot
        assert slot is not None
        prev = cache.slots[slot]
        cache.slots[slot] = x[:, :, -1:].clone()
        if prev is None:
            # The stream's first frame is kept as is; the stride-2 windows after it start on it, exactly
            # as when it was remembered as the left context of the next call.
            if x.shape[2] == 1:
                return x
            return torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)
        return self.time_conv(torch.cat([prev, x], dim=2))


def _causal_pass(
    x: torch.Tensor, conv1: CausalConv3d, blocks: tuple[nn.Module, ...], head: nn.Sequential, cache: VAECache | None
) -> torch.Tensor:
    """The encoder's and the decoder's forward: stem conv, blocks, then the head, every cached layer on `cache`."""
    x = conv1.stream(x, cache)
    for layer in blocks:
        x = layer(x, cache)
    for layer in head:
        x = layer.stream(x, cache) if isinstance(layer, CausalConv3d) else layer(x)
    return x


class Encoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        dims = [cfg.dim * u for u in (1, *cfg.dim_mult)]
        scale = 1.0
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        downsamples: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                downsamples.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    downsamples.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(cfg.dim_mult) - 1:
                downsamples.append(Resample(out_dim, "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*downsamples)
        self.middle = nn.Sequential(
            ResidualBlock(out_dim, out_dim, cfg.dropout),
            AttentionBlock(out_dim),
            ResidualBlock(out_dim, out_dim, cfg.dropout),
        )
        self.head = nn.Sequential(
            RMSNorm(out_dim, images=False), nn.SiLU(inplace=True), CausalConv3d(out_dim, cfg.z_dim * 2, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, cache: VAECache | None = None) -> torch.Tensor:
        return _causal_pass(x, self.conv1, (*self.downsamples, *self.middle), self.head, cache)


class Decoder3d(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dim * u for u in (mult[-1], *mult[::-1])]
        temporal_upsample = cfg.temporal_downsample[::-1]
        scale = 1.0 / 2 ** (len(mult) - 2)
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(
            ResidualBlock(dims[0], dims[0], cfg.dropout),
            AttentionBlock(dims[0]),
            ResidualBlock(dims[0], dims[0], cfg.dropout),
        )
        upsamples: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i in (1, 2, 3):
                in_dim = in_dim // 2  # every up-sampler halves the channels
            for _ in range(cfg.num_res_blocks + 1):
                upsamples.append(ResidualBlock(in_dim, out_dim, cfg.dropout))
                if scale in cfg.attn_scales:
                    upsamples.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(mult) - 1:
                upsamples.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*upsamples)
        self.head = nn.Sequential(
            RMSNorm(out_dim, images=False), nn.SiLU(inplace=True), CausalConv3d(out_dim, 3, 3, padding=1)
        )

    def forward(self, x: torch.Tensor, cache: VAECache | None = None) -> torch.Tensor:
        return _causal_pass(x, self.conv1, (*self.middle, *self.upsamples), self.head, cache)


def _number_cache_slots(module: nn.Module) -> int:
    """Give every temporal-kernel causal conv under `module` its own cache slot; return the count."""
    n = 0
    for m in module.modules():
        if isinstance(m, CausalConv3d) and m.kernel_size[0] > 1:
            m.cache_slot = n
            n += 1
    return n


# --------------------------------------------------------------------------------------------------


class WanVAE(nn.Module):
    """The Wan2.1 VAE: state-dict keys `encoder.*`, `conv1.*`, `conv2.*`, `decoder.*` as released.

    Video is [B, 3, T, H, W] in [-1, 1]; latents are [B, z_dim, T', H/8, W/8] in the scaled space the
    DiT uses, (mu - mean) / std, with T' = 1 + (T - 1) / 4 for a fresh stream.
    """

    def __init__(self, config: VAEConfig | None = None) -> None:
        super().__init__()
        self.config = config or VAEConfig()
        cfg = self.config
        self.encoder = Encoder3d(cfg)
        self.conv1 = CausalConv3d(cfg.z_dim * 2, cfg.z_dim * 2, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)
        self._encoder_slots = _number_cache_slots(self.encoder)
        self._decoder_slots = _number_cache_slots(self.decoder)
        self._scale_cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}
        # Default latent frames per encoder/decoder pass: None = the whole call in one pass (fastest on a
        # GPU; peak activation memory grows with it), 1 = the reference's frame-by-frame loop.
        self.latents_per_pass: int | None = None
        self.channels_last = False

    # -- performance settings (never change results beyond float rounding) ---------------------------

    def configure(self, *, latents_per_pass: int | None = None, channels_last: bool | None = None,
                  compile: bool = False, compile_backend: str = "inductor") -> WanVAE:
        """Set the default pass size (None or 0: whole call) and the conv memory layout; returns self.

        `compile=True` torch.compiles the encoder and decoder in place (one graph each, no breaks; every new
        input shape or cache state compiles once, in the warm-up); it cannot be undone.
        """
        if latents_per_pass is not None:
            self.latents_per_pass = _check_pass(latents_per_pass) or None
        if channels_last is not None:
            self.channels_last = bool(channels_last)
            for m in self.modules():
                if isinstance(m, nn.Conv3d | nn.Conv2d):
                    fmt = torch.channels_last_3d if isinstance(m, nn.Conv3d) else torch.channels_last
                    m.weight.data = m.weight.data.contiguous(
                        memory_format=fmt if channels_last else torch.contiguous_format)
        if compile:
            self.encoder.compile(dynamic=False, backend=compile_backend)
            self.decoder.compile(dynamic=False, backend=compile_backend)
        return self

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else x

    def _passes(self, latents_per_pass: int | None, default: int | None) -> int | None:
        n = _check_pass(latents_per_pass if latents_per_pass is not None else (default or 0))
        return n or None

    # -- caches --------------------------------------------------------------------------------------

    def new_encoder_cache(self) -> VAECache:
        return VAECache("encoder", self._encoder_slots)

    def new_decoder_cache(self) -> VAECache:
        return VAECache("decoder", self._decoder_slots)

    # -- latent scaling ------------------------------------------------------------------------------

    def latent_scale(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, 1/std) as [1, z, 1, 1, 1] in `like`'s dtype/device (1/std computed in that dtype, as the reference)."""
        key = (like.dtype, like.device)
        if key not in self._scale_cache:  # avoids a host-to-device copy on every call
            z = self.config.z_dim
            mean = torch.tensor(self.config.latent_mean, dtype=like.dtype, device=like.device)
            inv_std = 1.0 / torch.tensor(self.config.latent_std, dtype=like.dtype, device=like.device)
            self._scale_cache[key] = (mean.view(1, z, 1, 1, 1), inv_std.view(1, z, 1, 1, 1))
        return self._scale_cache[key]

    def scale_latents(self, mu: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.latent_scale(mu)
        return (mu - mean) * inv_std

    def unscale_latents(self, latents: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.latent_scale(latents)
        return latents / inv_std + mean

    # -- encode --------------------------------------------------------------------------------------

    def encode(self, video: torch.Tensor, *, cache: VAECache | None = None, scaled: bool = True,
               latents_per_pass: int | None = None) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> latents [B, z, T', H/8, W/8] (the posterior mean).

        Without `cache` the call is independent (the reference behaviour) and T must be 1 + 4k.  With a
        fresh cache the same holds and the cache keeps the stream's history afterwards; with a used cache
        the clip continues that stream and T must be a multiple of 4.  `scaled=False` returns the raw mu.
        `latents_per_pass`: latent frames per encoder pass (default `self.latents_per_pass`; 1 is the
        reference's loop: the first frame alone, then groups of 4 frames).
        """
        self._check_video(video)
        s = self.config.temporal_stride
        if cache is None:
            cache = self.new_encoder_cache()
        cache._check("encoder", video)
        t = video.shape[2]
        if cache.fresh:
            if (t - 1) % s:
                raise ValueError(f"VAE encode of a new clip needs 1 + {s}k frames, got {t}")
            ends = [1 + s * i for i in range(1 + (t - 1) // s)]  # latent i ends at video frame ends[i]
        else:
            if t % s:
                raise ValueError(f"VAE encode continuing a stream needs a multiple of {s} frames, got {t}")
            ends = [s * (i + 1) for i in range(t // s)]
        per_pass = self._passes(latents_per_pass, self.latents_per_pass) or len(ends)
        video = self._layout(video)
        outs, start = [], 0
        for i in range(0, len(ends), per_pass):
            end = ends[min(i + per_pass, len(ends)) - 1]
            outs.append(self.encoder(video[:, :, start:end], cache))
            cache.steps += min(per_pass, len(ends) - i)
            start = end
        enc = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        mu = self.conv1(enc).chunk(2, dim=1)[0].contiguous()  # log-variance is unused
        return self.scale_latents(mu) if scaled else mu

    def encode_motion(self, video: torch.Tensor, motion_frames: int = 5) -> torch.Tensor:
        """Latents of the last `motion_frames` frames of a decoded chunk, encoded as a new clip (1 + 4 -> 2)."""
        self._check_video(video)
        if motion_frames < 1 or motion_frames > video.shape[2]:
            raise ValueError(f"motion_frames must be in 1..{video.shape[2]}, got {motion_frames}")
        return self.encode(video[:, :, -motion_frames:])

    # -- decode --------------------------------------------------------------------------------------

    def decode_iter(
        self, latents: torch.Tensor, *, cache: VAECache | None = None, clamp: bool = True,
        latents_per_pass: int | None = 1,
    ) -> Iterator[torch.Tensor]:
        """Yield the video of each pass in turn: [B, 3, frames, H, W], 4 frames per latent but 1 for a
        stream's first latent.  `latents_per_pass` (default 1, the reference's loop; None: the VAE's
        default) latents go through the decoder together."""
        self._check_latents(latents)
        per_pass = self._passes(latents_per_pass, self.latents_per_pass) or latents.shape[2]
        if cache is None:
            cache = self.new_decoder_cache()
        cache._check("decoder", latents)
        x = self._layout(self.conv2(self.unscale_latents(latents)))
        for i in range(0, x.shape[2], per_pass):
            out = self.decoder(x[:, :, i : i + per_pass], cache).contiguous()
            cache.steps += min(per_pass, x.shape[2] - i)
            yield out.clamp_(-1.0, 1.0) if clamp else out

    def decode(self, latents: torch.Tensor, *, cache: VAECache | None = None, clamp: bool = True,
               latents_per_pass: int | None = None) -> torch.Tensor:
        """Latents [B, z, T', h, w] -> video [B, 3, T, 8h, 8w], clamped to [-1, 1] unless `clamp=False`.

        Without `cache` (the reference behaviour) T = 1 + 4(T' - 1); a kept cache continues a stream and
        then every latent gives 4 frames.  `latents_per_pass` as in `decode_iter`, but defaulting to the
        VAE's `latents_per_pass` (normally the whole call in one pass); the result does not depend on it
        beyond float rounding.
        """
        parts = list(self.decode_iter(latents, cache=cache, clamp=clamp, latents_per_pass=latents_per_pass))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)

    # -- input checks ----------------------------------------------------------------------------------

    def _check_video(self, video: torch.Tensor) -> None:
        if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
            shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
            raise ValueError(f"VAE video must be [B, 3, T, H, W], got {shape}")
        st = self.config.spatial_stride
        if video.shape[2] < 1 or video.shape[3] % st or video.shape[4] % st:
            raise ValueError(f"VAE video needs T >= 1 and H, W multiples of {st}, got {tuple(video.shape)}")
        if not video.is_floating_point():
            raise ValueError(f"VAE video must be floating point in [-1, 1], got {video.dtype}")

    def _check_latents(self, latents: torch.Tensor) -> None:
        z = self.config.z_dim
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[1] != z:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"VAE latents must be [B, {z}, T, h, w], got {shape}")
        if latents.shape[2] < 1 or not latents.is_floating_point():
            raise ValueError(f"VAE latents need T >= 1 and a floating dtype, got {tuple(latents.shape)} {latents.dtype}")

    def parameter_count(self) -> int:
        return sum(math.prod(p.shape) for p in self.parameters())


def _check_pass(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"latents_per_pass must be an integer >= 1 (or 0/None: the whole call), got {n!r}")
    return n


def expected_state_dict_shapes(config: VAEConfig | None = None) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the VAE's state dict, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = WanVAE(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}

