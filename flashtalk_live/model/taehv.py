"""TAEHV's tiny video decoder (taew2_1 layout) in pure PyTorch: parallel, sequential and streaming decode.

A Wan 2.1 latent video [N, T, 16, h, w] (NTCHW, the DiT's latents as sampled, no VAE mean/std un-scaling)
becomes RGB frames [N, 4T - 3, 3, 8h, 8w] in [0, 1]. The layers sit in one `decoder` Sequential whose
indices are those of the released files, so their `decoder.N....` keys load unchanged:

    0 soft clamp   1 conv 3x3 (latent -> c0)   2 ReLU
    3-5  memory blocks (c0)   6 upsample   7 temporal grow (x1)   8 conv 3x3 (c0 -> c1, no bias)
    9-11 memory blocks (c1)  12 upsample  13 temporal grow (x2)  14 conv 3x3 (c1 -> c2, no bias)
    15-17 memory blocks (c2) 18 upsample  19 temporal grow (x2)  20 conv 3x3 (c2 -> c3, no bias)
    21 ReLU  22 conv 3x3 (c3 -> 3)

A memory block mixes each frame with the previous frame's input to the same block (zeros before the first
frame); a temporal grow turns each frame into `stride` frames with one 1x1 conv. The decoder is causal, so
the whole clip at once (`decode(parallel=True)`), frame after frame (`parallel=False`) and an incremental
`TAEHVStream` give the same frames. The first `frames_to_trim` raw frames (3) only align the output with
the Wan VAE's frame count and are dropped.

`TinyVideoDecoder` puts it behind the Wan VAE's `decode` convention for the engine: [B, z, T, h, w] in,
[B, 3, 1 + 4(T - 1), 8h, 8w] in [-1, 1] out. The latents go in as the DiT samples them: the reference's Wan 2.1
demo notebook gives diffusers a latent mean of 0 and std of 1 (no un-scaling) and the Self-Forcing demo passes
its denoised latents straight in; both map the [0, 1] output to [-1, 1] with x * 2 - 1.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MemoryBlock", "TAEHVConfig", "TAEHVDecoder", "TAEHVStream", "TemporalGrow", "TinyVideoDecoder"]


@dataclass(frozen=True)
class TAEHVConfig:
    """Decoder shape; the defaults are the released taew2_1 decoder."""

    latent_channels: int = 16
    channels: tuple[int, int, int, int] = (256, 128, 64, 64)
    time_upscale: tuple[bool, bool, bool] = (False, True, True)
    space_upscale: tuple[bool, bool, bool] = (True, True, True)
    image_channels: int = 3

    def __post_init__(self) -> None:
        if self.latent_channels < 1 or len(self.channels) != 4 or min(self.channels) < 1:
            raise ValueError(f"bad TAEHV channels: latent {self.latent_channels}, stages {self.channels}")
        if len(self.time_upscale) != 3 or len(self.space_upscale) != 3:
            raise ValueError("time_upscale and space_upscale need one flag per stage (3)")

    @classmethod
    def taew2_1(cls) -> TAEHVConfig:
        return cls()

    @classmethod
    def tiny(cls, latent_channels: int = 16) -> TAEHVConfig:
        """Narrow stages for CPU tests; same layout and keys."""
        return cls(latent_channels=latent_channels, channels=(16, 8, 8, 8))

    @property
    def time_stride(self) -> int:
        return 2 ** sum(self.time_upscale)

    @property
    def space_stride(self) -> int:
        return 2 ** sum(self.space_upscale)

    @property
    def frames_to_trim(self) -> int:
        return self.time_stride - 1

    def frames_out(self, latent_frames: int) -> int:
        """Frames a clip of `latent_frames` latents decodes to (1 + 4(T - 1) for the released decoder)."""
        return max(0, self.time_stride * latent_frames - self.frames_to_trim)


def _conv3x3(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


class SoftClamp(nn.Module):
    """Squash latents smoothly into (-3, 3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemoryBlock(nn.Module):
    """Residual conv block over [frame, previous frame's input]; `conv.{0,2,4}` keys as released."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv3x3(2 * c_in, c_out), nn.ReLU(), _conv3x3(c_out, c_out), nn.ReLU(),
                                  _conv3x3(c_out, c_out))
        self.skip = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(torch.cat([x, past], 1)) + self.skip(x))


class TemporalGrow(nn.Module):
    """Each frame -> `stride` frames: a 1x1 conv to stride x C channels, the channel groups in time order."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, stride, C, H, W]."""
        b, c, h, w = x.shape
        return self.conv(x).view(b, self.stride, c, h, w)


class TAEHVDecoder(nn.Module):
    """The TAEHV decoder; `decode(latents NTCHW) -> frames NTCHW in [0, 1]`."""

    def __init__(self, config: TAEHVConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or TAEHVConfig()
        c = cfg.channels
        layers: list[nn.Module] = [SoftClamp(), _conv3x3(cfg.latent_channels, c[0]), nn.ReLU()]
        for stage in range(3):
            n = c[stage]
            layers += [MemoryBlock(n, n) for _ in range(3)]
            layers.append(nn.Upsample(scale_factor=2 if cfg.space_upscale[stage] else 1))  # nearest
            layers.append(TemporalGrow(n, 2 if cfg.time_upscale[stage] else 1))
            layers.append(_conv3x3(n, c[stage + 1], bias=False))
        layers += [nn.ReLU(), _conv3x3(c[3], cfg.image_channels)]
        self.decoder = nn.Sequential(*layers)

    @property
    def frames_to_trim(self) -> int:
        return self.config.frames_to_trim

    def check_latents(self, latents: torch.Tensor) -> None:
        c = self.config.latent_channels
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5 or latents.shape[2] != c:
            shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"TAEHV latents must be NTCHW [N, T, {c}, h, w], got {shape}")
        if not latents.is_floating_point():
            raise ValueError(f"TAEHV latents must be floating point, got {latents.dtype}")

    def decode(self, latents: torch.Tensor, *, parallel: bool = True) -> torch.Tensor:
        """Latents [N, T, C, h, w] -> frames [N, 4T - 3, 3, 8h, 8w] in [0, 1].

        parallel=True runs every frame through a layer at once (fast, memory grows with T); False runs one
        frame at a time through the whole decoder (memory independent of T). Both give the same frames.
        """
        self.check_latents(latents)
        if not parallel:
            stream = TAEHVStream(self)
            stream.push(latents)
            return stream.drain()
        return self._decode_parallel(latents)[:, self.frames_to_trim:].clamp(0, 1)

    def _decode_parallel(self, latents: torch.Tensor) -> torch.Tensor:
        n = latents.shape[0]
        x = latents.flatten(0, 1)  # [N*T, C, h, w]
        for block in self.decoder:
            if isinstance(block, MemoryBlock):
                seq = x.unflatten(0, (n, -1))
                past = F.pad(seq, (0, 0, 0, 0, 0, 0, 1, 0))[:, :-1]  # each frame's predecessor, zeros first
                x = block(x, past.flatten(0, 1))
            elif isinstance(block, TemporalGrow):
                x = block(x).flatten(0, 1)  # frames stay in time order: t0 part 0, t0 part 1, t1 part 0, ...
            else:
                x = block(x)
        return x.unflatten(0, (n, -1))


class TAEHVStream:
    """Incremental decode: `push` latents as they come, `next_frame` / `drain` the frames available so far.

    Holds, per memory block, the previous frame's input, and a work list of (tensor, next layer) items
    visited depth first, so each frame leaves as soon as its latent has been pushed. The first
    `frames_to_trim` frames of the stream are dropped, as in `TAEHVDecoder.decode`.
    """

    def __init__(self, decoder: TAEHVDecoder) -> None:
        self.decoder = decoder
        self.layers = list(decoder.decoder)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next latent starts a new clip."""
        self._memory: list[torch.Tensor | None] = [None] * len(self.layers)
        self._work: deque[tuple[torch.Tensor, int]] = deque()
        self._like: torch.Tensor | None = None  # a pushed latent: batch, geometry, dtype of the stream
        self.latents_in = 0
        self.raw_frames = 0  # frames the layers produced, trimmed ones included

    @property
    def frames_out(self) -> int:
        return max(0, self.raw_frames - self.decoder.frames_to_trim)

    def push(self, latents: torch.Tensor) -> None:
        """Queue latents [N, T, C, h, w] (N and h, w fixed for the stream)."""
        self.decoder.check_latents(latents)
        if self._like is not None and (latents.shape[0], *latents.shape[3:]) != (self._like.shape[0], *self._like.shape[2:]):
            raise ValueError(f"TAEHV stream of batch {self._like.shape[0]} and latent size "
                             f"{tuple(self._like.shape[2:])} got latents {tuple(latents.shape)}")
        if latents.shape[1]:
            self._like = latents[:, 0]
        self._work.extend((latents[:, t], 0) for t in range(latents.shape[1]))
        self.latents_in += latents.shape[1]

    def next_frame(self) -> torch.Tensor | None:
        """The next frame [N, 1, 3, H, W] in [0, 1], or None when it needs another latent."""
        while self._work:
            x, i = self._work.popleft()
            if i == len(self.layers):
                self.raw_frames += 1
                if self.raw_frames <= self.decoder.frames_to_trim:
                    continue
                return x.clamp(0, 1).unsqueeze(1)
            layer = self.layers[i]
            if isinstance(layer, MemoryBlock):
                past = self._memory[i]
                self._memory[i] = x
                self._work.appendleft((layer(x, torch.zeros_like(x) if past is None else past), i + 1))
            elif isinstance(layer, TemporalGrow):
                parts = layer(x).unbind(1)
                self._work.extendleft((p, i + 1) for p in reversed(parts))  # earliest part first
            else:
                self._work.appendleft((layer(x), i + 1))
        return None

    def drain(self) -> torch.Tensor:
        """Every frame available now, [N, F, 3, H, W] (F may be 0)."""
        frames = []
        while (f := self.next_frame()) is not None:
            frames.append(f)
        if frames:
            return torch.cat(frames, 1)
        if self._like is None:
            raise ValueError("TAEHVStream.drain() before any latent was pushed")
        n, h, w = self._like.shape[0], self._like.shape[-2], self._like.shape[-1]
        s = self.decoder.config.space_stride
        return self._like.new_zeros(n, 0, self.decoder.config.image_channels, h * s, w * s)


class TinyVideoDecoder(nn.Module):
    """TAEHV with the Wan VAE's decode signature: latents [B, z, T, h, w] (as sampled) -> video [B, 3, T', H, W]
    in [-1, 1]. Stateless: every call decodes its latents as one clip (docs/engine.md says why)."""

    def __init__(self, taehv: TAEHVDecoder, *, parallel: bool = True) -> None:
        super().__init__()
        self.taehv = taehv
        self.parallel = parallel

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if not isinstance(latents, torch.Tensor) or latents.ndim != 5:
            raise ValueError(f"latents must be [B, z, T, h, w], got {getattr(latents, 'shape', type(latents))}")
        frames = self.taehv.decode(latents.transpose(1, 2), parallel=self.parallel)  # NTCHW in [0, 1]
        return frames.transpose(1, 2).mul(2).sub(1)
