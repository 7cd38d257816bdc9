"""The VAE decode split over ranks by image height, exact: halo rows around every spatial conv, whole frames for attention.

Each rank decodes one horizontal band of the latent (rows split as evenly as possible, the first `h % N` ranks
get one more) through the unchanged `WanVAE` code, with a few of the decoder's modules given other forwards
for the duration of the call (`halo_decoder`):

* every `CausalConv3d` with a spatial kernel (3x3x3) and the up-samplers' 3x3 `Conv2d`: before the conv the
  band's input (for a causal conv: its cached history frames and the new frames together) gets `k // 2`
  rows from each neighbouring rank, or zero rows at the image's top and bottom (what the conv's own zero
  padding would give); the conv then runs without height padding, so each output row sees exactly the
  input rows it sees in the full decode;
* each `AttentionBlock` (the middle block's attention over all positions of a frame): the bands are
  all-gathered, the block runs on the whole frame, each rank keeps its band;
* everything else is per pixel or per row and needs nothing: RMS norms (over channels), SiLU, 1x1 convs,
  the temporal-only (3,1,1) convs of the up-samplers, nearest-exact 2x up-sampling (output row i reads
  input row i // 2), clamping.

Causal caches stay per rank and hold only the band's own rows (halo rows are re-exchanged with the history
each step). At the end the video bands are all-gathered: every rank gets the whole video. The result is the
single-process decode up to the conv kernels' summation order on smaller tensors (CPU tests: float64
bit-identical, float32 within 4e-6; tests/parallel/test_vae_split.py).

Protocol with the DiT job (`parallel/runtime.py`): rank 0's engine gets a `SplitDecodeVAE`, whose `decode`
validates, broadcasts a `{"op": "vae_decode", ...}` command on the control group and the latents on the
data group, then joins the collective decode; workers answer that command with `serve_vae_decode`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from flashtalk_live.model.vae import AttentionBlock, CausalConv3d, Resample, VAECache, WanVAE

from .group import ParallelGroup

__all__ = [
    "VAE_DECODE_OP",
    "SplitDecodeVAE",
    "SplitVAEInputError",
    "band_rows",
    "halo_decoder",
    "serve_vae_decode",
    "split_decode",
    "vae_worker_loop",
]

VAE_DECODE_OP = "vae_decode"
_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64)}
_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
_install_lock = threading.Lock()


class SplitVAEInputError(ValueError):
    """Latents the split decode cannot take; raised on every rank before any collective."""


def band_rows(h: int, world: int) -> list[tuple[int, int]]:
    """[start, end) latent rows of each rank: as even as possible, the first h % world ranks one row more."""
    if world < 1:
        raise SplitVAEInputError(f"world size must be >= 1, got {world}")
    if h < world:
        raise SplitVAEInputError(f"a latent of {h} rows cannot be split over {world} ranks (each needs >= 1 row)")
    base, extra = divmod(h, world)
    bounds, start = [], 0
    for r in range(world):
        end = start + base + (1 if r < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


class _Split:
    """What the installed forwards need: this rank, its neighbours, the group and the band sizes."""

    def __init__(self, pg: ParallelGroup, counts: list[int]):
        self.pg = pg
        self.rank = pg.rank
        self.world = pg.world_size
        self.group = pg.data
        self.counts = counts  # latent rows per rank
        self.exchanges = 0
        self.gathers = 0

    def _peer(self, r: int) -> int:
        return dist.get_global_rank(self.group, r) if self.group is not None else r

    def halo(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        """x [..., h, W] -> [..., rows + h + rows, W]: the neighbours' edge rows, zeros at the image border."""
        if rows == 0:
            return x
        if x.shape[-2] < rows:
            raise RuntimeError(f"band of {x.shape[-2]} rows is thinner than the {rows}-row halo")
        top = x[..., :rows, :].contiguous()
        bottom = x[..., -rows:, :].contiguous()
        from_above = torch.zeros_like(top)
        from_below = torch.zeros_like(bottom)
        ops = []
        if self.rank > 0:
            ops += [dist.P2POp(dist.isend, top, self._peer(self.rank - 1), self.group),
                    dist.P2POp(dist.irecv, from_above, self._peer(self.rank - 1), self.group)]
        if self.rank < self.world - 1:
            ops += [dist.P2POp(dist.isend, bottom, self._peer(self.rank + 1), self.group),
                    dist.P2POp(dist.irecv, from_below, self._peer(self.rank + 1), self.group)]
        for req in dist.batch_isend_irecv(ops) if ops else []:
            req.wait()
        self.exchanges += 1
        return torch.cat([from_above, x, from_below], dim=-2)

    def gather_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's band of x [..., h_r, W] (same resolution on all ranks) -> the whole [..., H, W]."""
        mine = self.counts[self.rank]
        if x.shape[-2] % mine:
            raise RuntimeError(f"band of {x.shape[-2]} rows is not a multiple of the latent band's {mine} rows")
        scale = x.shape[-2] // mine
        rows = [c * scale for c in self.counts]
        top = max(rows)
        padded = F.pad(x, (0, 0, 0, top - x.shape[-2])).contiguous()
        out = torch.empty((self.world, *padded.shape), dtype=x.dtype, device=x.device)
        _gather_single(out.view(self.world * padded.shape[0], *padded.shape[1:]), padded, group=self.group)
        self.gathers += 1
        return torch.cat([out[r, ..., : rows[r], :] for r in range(self.world)], dim=-2)

    def band_of(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole-frame tensor [..., H, W]."""
        total = sum(self.counts)
        if full.shape[-2] % total:
            raise RuntimeError(f"{full.shape[-2]} rows is not a multiple of the latent's {total}")
        scale = full.shape[-2] // total
        start = sum(self.counts[: self.rank]) * scale
        return full[..., start : start + self.counts[self.rank] * scale, :]


def _causal_conv_forward(conv: CausalConv3d, split: _Split) -> Callable[..., torch.Tensor]:
    pw, _, ph, _, _, _ = (int(v) for v in conv._causal_pad)
    if conv.stride[1] != 1 or conv.kernel_size[1] != 2 * ph + 1 or conv.padding_mode != "zeros":
        raise NotImplementedError(f"halo exchange supports stride-1 'same' convs only, got {conv}")

    def forward(x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        # Time context (history, zeros) first, then the halo: the neighbours' history rows come along.
        x = split.halo(conv.time_context(x, history), ph)
        return F.conv3d(x, conv.weight, conv.bias, conv.stride, (0, 0, pw), conv.dilation, conv.groups)

    return forward


def _conv2d_forward(conv: nn.Conv2d, split: _Split) -> Callable[[torch.Tensor], torch.Tensor]:
    ph, pw = cast(tuple[int, int], conv.padding)  # an int pair: the VAE builds its convs with int padding
    if conv.stride[0] != 1 or conv.kernel_size[0] != 2 * ph + 1 or conv.padding_mode != "zeros":
        raise NotImplementedError(f"halo exchange supports stride-1 'same' convs only, got {conv}")

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = split.halo(x, ph)
        return F.conv2d(x, conv.weight, conv.bias, conv.stride, (0, pw), conv.dilation, conv.groups)

    return forward


def _attention_forward(block: AttentionBlock, split: _Split) -> Callable[..., torch.Tensor]:
    def forward(x: torch.Tensor, cache: VAECache | None = None) -> torch.Tensor:
        full = split.gather_rows(x)
        return split.band_of(AttentionBlock.forward(block, full, cache))

    return forward


def _halo_targets(decoder: nn.Module, split: _Split) -> list[tuple[nn.Module, Callable[..., torch.Tensor]]]:
    """The decoder's modules that need another forward, with it; refuses any conv it has no rule for."""
    targets: list[tuple[nn.Module, Callable[..., torch.Tensor]]] = []
    covered: set[int] = set()  # convs inside attention blocks (run on whole frames) or given a halo forward
    for m in decoder.modules():
        if isinstance(m, AttentionBlock):
            targets.append((m, _attention_forward(m, split)))
            covered.update(id(c) for c in m.modules())
        elif isinstance(m, Resample):
            if not m.mode.startswith("up"):
                raise NotImplementedError(f"split decode met a {m.mode} resampler")
            conv = cast(nn.Conv2d, m.resample[1])
            targets.append((conv, _conv2d_forward(conv, split)))
            covered.add(id(conv))
        elif isinstance(m, CausalConv3d) and m._causal_pad[2] > 0:  # 3x3x3; (3,1,1) and 1x1x1 are row-local
            targets.append((m, _causal_conv_forward(m, split)))
            covered.add(id(m))
    for m in decoder.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d) and id(m) not in covered and m.kernel_size[-2] != 1:
            raise NotImplementedError(f"split decode has no halo rule for {m}")
    return targets


@contextlib.contextmanager
def halo_decoder(vae: WanVAE, pg: ParallelGroup, counts: list[int]) -> Iterator[_Split]:
    """Within the block, `vae.decoder` decodes this rank's band (of `counts[rank]` latent rows) collectively.

    The forwards are instance attributes, removed on exit (also on error). The VAE's encoder is untouched;
    its decoder must not be used by another thread meanwhile.
    """
    if len(counts) != pg.world_size or any(c < 1 for c in counts):
        raise SplitVAEInputError(f"need one band of >= 1 row per rank, got {counts} for {pg.world_size} ranks")
    split = _Split(pg, counts)
    with _install_lock:
        targets = _halo_targets(vae.decoder, split)
        clash = [m for m, _ in targets if "forward" in m.__dict__]
        if clash:
            raise RuntimeError(f"decoder module already has an instance forward (nested split decode?): {clash[0]}")
        for m, fwd in targets:
            m.forward = fwd
    try:
        yield split
    finally:
        for m, _ in targets:
            m.__dict__.pop("forward", None)


def _check(vae: WanVAE, latents: torch.Tensor, world: int) -> list[tuple[int, int]]:
    try:
        vae._check_latents(latents)
    except ValueError as e:
        raise SplitVAEInputError(str(e)) from None
    return band_rows(latents.shape[3], world)


@torch.no_grad()
def split_decode(vae: WanVAE, latents: torch.Tensor, pg: ParallelGroup, *, cache: VAECache | None = None,
                 clamp: bool = True, latents_per_pass: int | None = None) -> torch.Tensor:
    """Collective: every rank passes the same whole latents [B, z, T, h, w]; every rank gets the whole video.

    Same result as `vae.decode(latents, cache=..., clamp=..., latents_per_pass=...)`; every rank must use the
    same pass size (it sets the sequence of halo exchanges), so give it explicitly rather than rely on each
    rank's VAE default. `cache` (optional) is this rank's own
    decoder cache for its band, kept across calls to continue a stream; bad latents raise
    `SplitVAEInputError` on every rank before any collective.
    """
    bounds = _check(vae, latents, pg.world_size)
    if pg.world_size == 1:
        return vae.decode(latents, cache=cache, clamp=clamp, latents_per_pass=latents_per_pass)
    a, b = bounds[pg.rank]
    band = latents[:, :, :, a:b]
    with halo_decoder(vae, pg, [e - s for s, e in bounds]) as split:
        video = vae.decode(band, cache=cache, clamp=clamp, latents_per_pass=latents_per_pass)
        return split.gather_rows(video).contiguous()


# ------------------------------------------------------------------------------------------ protocol


class SplitDecodeVAE(nn.Module):
    """Rank 0's VAE for the engine: `decode` runs split over all ranks, `encode` stays on rank 0.

    `enabled = False` decodes on rank 0 alone (a profile without the split); the workers are not involved.
    """

    def __init__(self, vae: WanVAE, pg: ParallelGroup, *, enabled: bool = True):
        super().__init__()
        if not pg.is_root:
            raise ValueError("SplitDecodeVAE runs on rank 0; the other ranks answer with serve_vae_decode")
        self.vae = vae
        self.pg = pg
        self.enabled = enabled
        self.calls = 0
        self.closed = False

    @property
    def config(self):
        return self.vae.config

    def encode(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.vae.encode(*args, **kwargs)

    def encode_motion(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.vae.encode_motion(*args, **kwargs)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, cache: VAECache | None = None, clamp: bool = True) -> torch.Tensor:
        if not self.enabled or self.pg.world_size == 1:
            return self.vae.decode(latents, cache=cache, clamp=clamp)
        if self.closed:
            raise RuntimeError("this split VAE was shut down or replaced")
        if cache is not None:
            raise SplitVAEInputError("the split decode keeps no stream cache across calls (workers hold none); "
                                     "pass cache=None")
        _check(self.vae, latents, self.pg.world_size)  # before the command: workers never see bad input
        if str(latents.dtype) not in _DTYPES:
            raise SplitVAEInputError(f"unsupported latent dtype {latents.dtype}")
        latents = latents.to(self.pg.device).contiguous()
        # Rank 0's pass size goes with the command (0: whole call), so every rank runs the same exchanges.
        per_pass = self.vae._passes(None, self.vae.latents_per_pass) or 0
        cmd = {"op": VAE_DECODE_OP, "shape": tuple(latents.shape), "dtype": str(latents.dtype), "clamp": bool(clamp),
               "latents_per_pass": per_pass}
        dist.broadcast_object_list([cmd], src=0, group=self.pg.control)
        dist.broadcast(latents, src=0, group=self.pg.data)
        self.calls += 1
        return split_decode(self.vae, latents, self.pg, clamp=clamp, latents_per_pass=per_pass)


def serve_vae_decode(vae: WanVAE, pg: ParallelGroup, cmd: dict[str, Any]) -> None:
    """A worker's answer to a `vae_decode` command: receive the latents, join the split decode, drop the video."""
    buf = torch.empty(tuple(cmd["shape"]), dtype=_DTYPES[cmd["dtype"]], device=pg.device)
    dist.broadcast(buf, src=0, group=pg.data)
    split_decode(vae, buf, pg, clamp=bool(cmd["clamp"]), latents_per_pass=int(cmd.get("latents_per_pass", 0)))


def vae_worker_loop(vae: WanVAE, pg: ParallelGroup) -> int:
    """Serve `vae_decode` commands until 'shutdown' (a VAE-only job; the DiT job's loop should dispatch
    `VAE_DECODE_OP` to `serve_vae_decode` instead). Returns the number of decodes."""
    n = 0
    while True:
        box: list[Any] = [None]
        dist.broadcast_object_list(box, src=0, group=pg.control)
        cmd = box[0]
        op = cmd.get("op") if isinstance(cmd, dict) else None
        if op == "shutdown":
            return n
        if op != VAE_DECODE_OP:
            raise RuntimeError(f"unknown command from rank 0: {cmd!r}")
        serve_vae_decode(vae, pg, cmd)
        n += 1
