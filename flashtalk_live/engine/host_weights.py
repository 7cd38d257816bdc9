"""Weights that a steady chunk never reads wait in host memory: the DiT's context projections.

Every block's text/image cross-attention projects the session's context (prompt + reference image tokens) into keys
and values with four linears (k, v, k_img, v_img). The DiT caches those keys and values for the session, so between
session starts (a new prompt, image or profile) the four linears are idle: 4.19 B parameters, about 4.7 GB of the
14B's GPU memory in fp8 with the first/last blocks in bf16. `park_context_projections` moves them into (pinned) host
memory; a session start copies each one in as it is called and drops the copy after (once per session; not timed
apart from the start-up). A forward that finds the session's keys and values cached never touches them.

The parked tensors share one host buffer (`HostSlab`), page-locked as a whole: torch's pinned allocator
(`pin_memory=True`) rounds each block up to a power of two, so one tensor each would take a 26.2 MB fp8 projection
as 32 MB and a 52.4 MB bf16 one as 64 MB (about 1 GB more host memory for the 14B).
"""

from __future__ import annotations

import weakref
from itertools import chain
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from flashtalk_live.log import get_logger

# The context-only linears of ImageTextCrossAttention (model.dit): used by project_context alone.
CONTEXT_PROJECTIONS = ("k", "v", "k_img", "v_img")


class HostSlab:
    """Tensors copied into one host buffer at aligned offsets; the buffer page-locked once for CUDA where `pin`.

    `views[i]` is `tensors[i]`'s copy (same dtype and shape), a view into the buffer. The page-locking lasts as long
    as the buffer's memory, whoever holds it: a view kept after the slab is dropped stays page-locked.
    """

    ALIGN = 512  # bytes: any element size divides it, and DMA copies start on an aligned address

    def __init__(self, tensors: Sequence[torch.Tensor], pin: bool) -> None:
        offsets, end = [], 0
        for t in tensors:
            offsets.append(end)
            end += -(-t.numel() * t.element_size() // self.ALIGN) * self.ALIGN
        self.nbytes = end
        # numpy owns the memory and every tensor on it holds the array: unregistered as the array goes, before
        # numpy frees it, once the last view has gone (tied to the slab object, a kept view lost its page-locking)
        memory = np.empty(end + self.ALIGN, dtype=np.uint8)
        skip = -memory.ctypes.data % self.ALIGN  # malloc aligns to 16 bytes only
        self.buffer = torch.from_numpy(memory[skip:skip + end])
        self.pinned = False
        if pin and end:
            # before the copies: device -> host goes straight into page-locked memory
            self.pinned = _register(self.buffer)
            if self.pinned:
                weakref.finalize(memory, torch.cuda.cudart().cudaHostUnregister, self.buffer.data_ptr())
        self.views = []
        for t, off in zip(tensors, offsets):
            n = t.numel() * t.element_size()
            view = self.buffer[off:off + n].view(t.dtype).view(t.shape)
            view.copy_(t.detach())
            self.views.append(view)


def _register(buffer: torch.Tensor) -> bool:
    """Page-lock `buffer` for CUDA (torch's binding releases the interpreter meanwhile). False where CUDA refuses:
    the slab stays pageable, which costs each session start a staged copy, not the room."""
    err = int(torch.cuda.cudart().cudaHostRegister(buffer.data_ptr(), buffer.numel(), 0))
    if err:
        get_logger("engine").warning("host_slab_not_page_locked", bytes=buffer.numel(), cuda_error=err,
                                     note="session starts copy the parked weights through a staging buffer")
    return not err


class HostParked(nn.Module):
    """A layer whose tensors live in host memory; each call runs it with copies on the input's device.

    The layer itself is kept on the meta device (no memory) and unregistered, so the model's `.to()`,
    `parameters()` and `state_dict()` do not see its tensors: they are this wrapper's, in `host` (views into
    `slab`, which may hold other layers' tensors too).
    """

    layer: nn.Module

    def __init__(self, layer: nn.Module, host: dict[str, torch.Tensor], slab: HostSlab) -> None:
        super().__init__()
        self.host = host
        self.slab = slab
        self.nbytes = sum(t.numel() * t.element_size() for t in host.values())
        object.__setattr__(self, "layer", layer.to("meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # page-locked -> device copies are ordered on the current stream before the layer's kernels, and the host
        # tensors outlive them, so non_blocking is safe
        tensors = {name: t.to(x.device, non_blocking=True) for name, t in self.host.items()}
        return functional_call(self.layer, tensors, (x,))


def park_layers(layers: Sequence[nn.Module], pin: bool) -> list[HostParked]:
    """Each layer's tensors copied into one shared host slab (page-locked where `pin`); a HostParked for each."""
    named = [list(chain(layer.named_parameters(), layer.named_buffers())) for layer in layers]
    slab = HostSlab([t for tensors in named for _, t in tensors], pin)
    views = iter(slab.views)
    return [HostParked(layer, {name: next(views) for name, _ in tensors}, slab)
            for layer, tensors in zip(layers, named)]


def park_context_projections(dit: nn.Module, *, pin: bool | None = None) -> int:
    """Move every block's context projections into host memory (page-locked where CUDA is there); bytes moved.

    For a DiT whose session context is cached (`FlashTalkDiT.cache_inputs`, the default): with the cache off every
    step would copy them in. Idempotent: parked layers stay as they are.
    """
    pin = torch.cuda.is_available() if pin is None else pin
    places = []
    for attn in _cross_attentions(dit):
        for name in CONTEXT_PROJECTIONS:
            layer = getattr(attn, name)
            if isinstance(layer, HostParked) or not _plain(layer):
                continue  # parked already, or tensor subclasses (torchao's fp8) whose host copy is not known to work
            places.append((attn, name, layer))
    parked = park_layers([layer for _, _, layer in places], pin) if places else []
    for (attn, name, _), p in zip(places, parked):
        setattr(attn, name, p)
    return sum(p.nbytes for p in parked)


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
