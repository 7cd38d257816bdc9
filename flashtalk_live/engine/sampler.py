"""The distilled FlashTalk sampler: shifted timesteps, x0 from the flow velocity, fresh re-noising, motion latents imposed.

One chunk, with sigma_i = t_i / 1000 and n clean motion latent frames:

    latent = noise_0;  latent[:, :n] = motion
    for i in range(steps):
        v = model(latent, t_i);  x0 = latent + (-v) * sigma_i
        latent = (1 - sigma_{i+1}) * x0 + sigma_{i+1} * noise_{i+1};  latent[:, :n] = motion

`steps + 1` noises are drawn per chunk (the last is scaled by sigma = 0 but still consumed), exactly as the
reference draws them from its one session generator: noise_0 in the model dtype, the re-noises in float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from flashtalk_live.chunks import RenderAbandoned

NUM_TIMESTEPS = 1000

# Called as noise_fn(draw_index, shape, dtype, device) -> tensor; draw 0 is the initial noise.
NoiseFn = Callable[[int, tuple[int, ...], torch.dtype, torch.device], torch.Tensor]


def timestep_transform(t: torch.Tensor, shift: float, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """The flow-matching shift t' = N * shift*s / (1 + (shift-1)*s), s = t/N, in float32 like the reference."""
    s = t / num_timesteps
    return shift * s / (1 + (shift - 1) * s) * num_timesteps


def make_timesteps(steps: int, shift: float, num_timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """float32 [steps + 1]: the reference's fixed lists for 4 and 2 steps, linspace(N, 1) otherwise, then 0; shifted."""
    if steps < 1:
        raise ValueError(f"need at least 1 sampling step, got {steps}")
    if steps == 4:
        raw = [torch.tensor([t]) for t in (1000, 750, 500, 250)]
    elif steps == 2:
        raw = [torch.tensor([t]) for t in (1000, 500)]
    else:
        raw = [t.reshape(1) for t in torch.linspace(num_timesteps, 1, steps)]
    raw.append(torch.tensor([0]))
    return torch.cat([timestep_transform(t, shift, num_timesteps).float() for t in raw])


class NoiseSource:
    """Draws a chunk's noises from one session generator, or takes them from `noise_fn` / an injected list."""

    def __init__(self, seed: int, device: torch.device, noise_fn: NoiseFn | None = None) -> None:
        self.device = torch.device(device)
        self.seed = seed
        self.noise_fn = noise_fn
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.draws = 0  # over the whole session

    def reset(self) -> None:
        self.generator = torch.Generator(self.device).manual_seed(self.seed)
        self.draws = 0

    def draw(self, index: int, shape: tuple[int, ...], dtype: torch.dtype,
             injected: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        self.draws += 1
        if injected is not None:
            t = injected[index]
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"injected noise {index} has shape {tuple(t.shape)}, the latent is {tuple(shape)}")
            return t.to(device=self.device, dtype=dtype)
        if self.noise_fn is not None:
            t = self.noise_fn(index, tuple(shape), dtype, self.device)
            if tuple(t.shape) != tuple(shape):
                raise ValueError(f"noise_fn gave shape {tuple(t.shape)} for draw {index}, expected {tuple(shape)}")
            return t.to(device=self.device, dtype=dtype)
        return torch.randn(shape, dtype=dtype, device=self.device, generator=self.generator)


def sample(
    velocity: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
    motion: torch.Tensor,
    latent_shape: tuple[int, ...],
    timesteps: torch.Tensor,
    noise: NoiseSource,
    *,
    noise_dtype: torch.dtype,
    injected: Sequence[torch.Tensor] | None = None,
    trace: dict[str, Any] | None = None,
    on_step: Callable[[int], None] | None = None,
    abandoned: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Run the sampler for one chunk and return the final latent [C, T, h, w] (motion frames imposed).

    velocity(latent, t [1], step) -> v (same shape, float32); motion [C, n, h, w] clean latents;
    timesteps float32 [steps + 1] ending in 0; `injected` replaces the steps + 1 draws; `trace` (a dict)
    receives every step's latent_in, t, v and x0 and the noises; `on_step(i)` runs after step i (timing);
    `abandoned()` is asked before each step and after the last: True raises RenderAbandoned (the caller's chunk was
    discarded; it should wait for the device's queue first, else the steps already queued run anyway).
    """
    steps = timesteps.shape[0] - 1
    if injected is not None and len(injected) != steps + 1:
        raise ValueError(f"{steps} steps need {steps + 1} injected noises, got {len(injected)}")
    n = motion.shape[1]
    if motion.shape[0] != latent_shape[0] or motion.shape[2:] != tuple(latent_shape[2:]) or n >= latent_shape[1]:
        raise ValueError(f"motion latents {tuple(motion.shape)} do not fit the latent {tuple(latent_shape)}")
    timesteps = timesteps.to(noise.device)  # once (a no-op when the caller keeps them there): no copy per step
    sigmas = timesteps / NUM_TIMESTEPS
    latent = noise.draw(0, latent_shape, noise_dtype, injected)
    if trace is not None:
        trace["noise_0"] = latent.clone()
    latent[:, :n] = motion.to(latent.dtype)
    for i in range(steps):
        if abandoned is not None and abandoned():
            raise RenderAbandoned(f"abandoned before step {i} of {steps}")
        t = timesteps[i : i + 1]
        if trace is not None:
            trace[f"step{i}.latent_in"] = latent.clone()
            trace[f"step{i}.t"] = t.clone()
        v = velocity(latent, t, i)
        x0 = latent + (-v) * sigmas[i]
        eps = noise.draw(i + 1, latent_shape, torch.float32, injected)
        latent = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * eps
        latent[:, :n] = motion.to(latent.dtype)
        if trace is not None:
            trace[f"step{i}.v"] = v.clone()
            trace[f"step{i}.x0"] = x0.clone()
            trace[f"noise_{i + 1}"] = eps.clone()
        if on_step is not None:
            on_step(i)
    if abandoned is not None and abandoned():
        raise RenderAbandoned(f"abandoned after its {steps} steps, before decoding")
    return latent
