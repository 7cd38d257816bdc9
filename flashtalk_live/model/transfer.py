"""Host data onto the device without stalling the CUDA queue.

A plain host->device copy from pageable memory waits for every kernel already queued on the stream, so the
host stops launching work until the GPU is idle. Small constant tables are made once per device and dtype;
per-call host data goes through pinned memory with a non-blocking copy (stream-ordered, no host wait).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch


def _freeze(values: Any) -> Any:
    if isinstance(values, (list, tuple)):
        return tuple(_freeze(v) for v in values)
    return values


@functools.lru_cache(maxsize=64)
def _constant(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device)


def device_constant(values: Sequence[Any], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A small constant table (nested numbers) on `device`, built once per (values, dtype, device). Never write to it."""
    return _constant(_freeze(values), dtype, torch.device(device))


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """t on `device`; a host tensor goes to a CUDA device through pinned memory, without a host wait."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)  # the pinned block is freed only after the copy
    return t.to(device)
