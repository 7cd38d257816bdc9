"""The DiT's tokens split over ranks: Ulysses all-to-all around self-attention, everything else local.

`UlyssesSplit` is the `TokenSplit` that `FlashTalkDiT.forward(..., split=)` takes: the forward itself is the
model's own (model/dit.py); this module supplies only the hooks. Each rank holds the contiguous slice [rank*S, (rank+1)*S) of the token sequence padded to a multiple of the
world size (S = padded / world). Per block:

* self-attention: q/k/v [B, S, H, D] -> all-to-all in the Ulysses group (heads scattered, tokens gathered)
  -> [B, u*S, H/u, D]; if the heads do not divide by the world size (`plan_degrees`), K/V are further
  all-gathered over the ring group -> [B, N_pad, H/u, D]; attention over the whole sequence with the
  padding keys masked (k_lens = real token count); the inverse all-to-all brings [B, S, H, D] back;
* RoPE: `DiTEmbeddings.block_inputs(start, end)` gives the tables of the slice's global positions;
* text/image cross-attention: local (every rank has the whole context);
* audio cross-attention: local, per latent frame, by the slice's frame runs, which may start or end
  inside a frame (block_inputs computes them);
* padding tokens (at the end of the last slices) are queries only: their keys are masked, their audio
  attention output is zero, and `unpatchify` drops them, so they cannot touch a real token.

After the head every rank's slice is all-gathered and unpatchified (every rank gets the full output).
Inputs the DiT rejects raise `DiTInputError` in its `embed` stage, before any collective, on every rank.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from flashtalk_live.model.attention import attention
from flashtalk_live.model.dit import TokenSplit

from .group import ParallelConfigError, ParallelGroup, padded_length


def _all_to_all(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """x [world, ...] (chunk j goes to member j) -> [world, ...] (chunk j came from member j)."""
    x = x.contiguous()
    out = torch.empty_like(x)  # after contiguous(): empty_like keeps the strides of its argument
    dist.all_to_all_single(out, x, group=group)
    return out


_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13


def _all_gather(x: torch.Tensor, group, world: int) -> torch.Tensor:
    """x [B, ...] from each member -> [world, B, ...] in member order."""
    out = torch.empty((world * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
    _gather_single(out, x.contiguous(), group=group)
    return out.unflatten(0, (world, x.shape[0]))


class UlyssesAttention:
    """The `self_attention` callable of BlockInputs for one rank: (q, k, v, k_lens=) on [B, S, H, D]."""

    def __init__(self, pg: ParallelGroup, num_heads: int):
        if num_heads % pg.ulysses:
            raise ParallelConfigError(f"{num_heads} heads do not split over a Ulysses degree of {pg.ulysses}")
        self.pg = pg
        self.num_heads = num_heads
        self.calls = 0

    def _seq_to_heads(self, t: torch.Tensor) -> torch.Tensor:
        """[B, S, H, D] -> [B, u*S, H/u, D]: send head chunk j to Ulysses member j, gather its tokens."""
        u = self.pg.ulysses
        if u == 1:
            return t
        b, s, h, d = t.shape
        x = t.reshape(b, s, u, h // u, d).permute(2, 0, 1, 3, 4)  # [u, B, S, H/u, D]
        y = _all_to_all(x, self.pg.ulysses_group, u)  # [u (source member = token block), B, S, H/u, D]
        return y.permute(1, 0, 2, 3, 4).reshape(b, u * s, h // u, d)

    def _heads_to_seq(self, t: torch.Tensor) -> torch.Tensor:
        """[B, u*S, H/u, D] -> [B, S, H, D]: the inverse of _seq_to_heads."""
        u = self.pg.ulysses
        if u == 1:
            return t
        b, us, hu, d = t.shape
        s = us // u
        x = t.reshape(b, u, s, hu, d).permute(1, 0, 2, 3, 4)  # [u (destination member), B, S, H/u, D]
        y = _all_to_all(x, self.pg.ulysses_group, u)  # [u (source member = head chunk), B, S, H/u, D]
        return y.permute(1, 2, 0, 3, 4).reshape(b, s, u * hu, d)

    def _gather_ring(self, t: torch.Tensor) -> torch.Tensor:
        """[B, u*S, H/u, D] -> [B, N_pad, H/u, D]: K/V of the other token blocks that hold the same heads."""
        r = self.pg.ring
        if r == 1:
            return t
        return torch.cat(_all_gather(t, self.pg.ring_group, r).unbind(0), dim=1)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, k_lens=None) -> torch.Tensor:
        if q.shape[2] != self.num_heads:
            raise ValueError(f"expected {self.num_heads} heads, got q {tuple(q.shape)}")
        self.calls += 1
        qh = self._seq_to_heads(q)
        kh = self._gather_ring(self._seq_to_heads(k))
        vh = self._gather_ring(self._seq_to_heads(v))
        out = attention(qh, kh, vh, k_lens=k_lens)  # k_lens count over the whole padded sequence
        return self._heads_to_seq(out)


def gather_tokens(x: torch.Tensor, pg: ParallelGroup) -> torch.Tensor:
    """Every rank's [B, S, C] slice -> [B, world*S, C] in rank order, on every rank."""
    if pg.world_size == 1:
        return x
    return torch.cat(_all_gather(x, pg.data, pg.world_size).unbind(0), dim=1)


class UlyssesSplit(TokenSplit):
    """This rank's share of every DiT forward: pass it as `FlashTalkDiT.forward(..., split=)` on every rank with the
    same inputs; the result (float32 [B, out_dim, T, H, W]) is the same on every rank.

    The sequence is padded to a multiple of the world size; rank r runs tokens [r*S, (r+1)*S) through the blocks
    with `UlyssesAttention`, and the head outputs are all-gathered.
    """

    def __init__(self, pg: ParallelGroup, num_heads: int):
        self.attention = UlyssesAttention(pg, num_heads)
        super().__init__(self.attention)
        self.pg = pg

    def padded_length(self, seq_len: int) -> int:
        return padded_length(seq_len, self.pg.world_size)

    def bounds(self, seq_len: int) -> tuple[int, int]:
        s = seq_len // self.pg.world_size
        return self.pg.rank * s, (self.pg.rank + 1) * s

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        return gather_tokens(local, self.pg)
