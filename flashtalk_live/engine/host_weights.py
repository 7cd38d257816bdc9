"""Weights that a steady chunk never reads wait in host memory: the DiT's context projections.

Every block's text/image cross-attention projects the session's context (prompt + reference image tokens) into keys
and values with four linears (k, v, k_img, v_img). The DiT caches those keys and values for the session, so between
session starts (a new prompt, image or profile) the four linears are idle: 4.19 B parameters, about 4.7 GB of the
14B's GPU memory in fp8 with the first/last blocks in bf16. `park_context_projections` moves them into (pinned) host
memory; a session start copies each one in as it is called and drops the copy after (once per session; not timed
apart from the start-up). A forward that finds the session's keys and values cached never touches them.
"""

from __future__ import annotations

from itertools import chain
from typing import Iterable

import torch
from torch import nn
from torch.func import functional_call

# The context-only linears of ImageTextCrossAttention (model.dit): used by project_context alone.
CONTEXT_PROJECTIONS = ("k", "v", "k_img", "v_img")


class HostParked(nn.Module):
    """A layer whose tensors live in host memory; each call runs it with copies on the input's device.

    The layer itself is kept on the meta device (no memory) and unregistered, so the model's `.to()`,
    `parameters()` and `state_dict()` do not see its tensors: they are this wrapper's, in `host`.
    """

    layer: nn.Module

    def __init__(self, layer: nn.Module, pin: bool) -> None:
        super().__init__()
        host = {}
        for name, t in chain(layer.named_parameters(), layer.named_buffers()):
            # straight into pinned memory: one copy, no pageable staging tensor
            host[name] = torch.empty_like(t, device="cpu", pin_memory=pin).copy_(t.detach())
        self.host = host
        self.nbytes = sum(t.numel() * t.element_size() for t in host.values())
        object.__setattr__(self, "layer", layer.to("meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # pinned -> device copies are ordered on the current stream before the layer's kernels, and the host
        # tensors outlive them, so non_blocking is safe
        tensors = {name: t.to(x.device, non_blocking=True) for name, t in self.host.items()}
        return functional_call(self.layer, tensors, (x,))


def park_context_projections(dit: nn.Module, *, pin: bool | None = None) -> int:
    """Move every block's context projections into host memory (pinned where CUDA is there); bytes moved.

    For a DiT whose session context is cached (`FlashTalkDiT.cache_inputs`, the default): with the cache off every
    step would copy them in. Idempotent: parked layers stay as they are.
    """
    pin = torch.cuda.is_available() if pin is None else pin
    moved = 0
    for attn in _cross_attentions(dit):
        for name in CONTEXT_PROJECTIONS:
            layer = getattr(attn, name)
            if isinstance(layer, HostParked) or not _plain(layer):
                continue  # parked already, or tensor subclasses (torchao's fp8) whose host copy is not known to work
            parked = HostParked(layer, pin)
            setattr(attn, name, parked)
            moved += parked.nbytes
    return moved


def _plain(layer: nn.Module) -> bool:
    """Every tensor of `layer` a plain tensor or parameter (no tensor subclass)."""
    return all(type(t) in (torch.Tensor, nn.Parameter) for t in chain(layer.parameters(), layer.buffers()))


def parked_bytes(dit: nn.Module) -> int:
    """Host bytes of the parked context projections (0: none parked)."""
    return sum(m.nbytes for m in dit.modules() if isinstance(m, HostParked))


def _cross_attentions(dit: nn.Module) -> Iterable[nn.Module]:
    blocks = getattr(dit, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(dit).__name__} has no transformer blocks to park context projections of")
    for block in blocks:
        yield block.cross_attn
