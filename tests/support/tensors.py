"""Comparing tensors in parity and numerics tests: one definition of the errors the tests bound."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def errors(got: Any, want: Any) -> tuple[float, float]:
    """(max absolute error, relative L2 error) of `got` against `want`, in float64 on the CPU; shapes must match."""
    g = torch.as_tensor(got).detach().double().cpu()
    w = torch.as_tensor(want).detach().double().cpu()
    assert g.shape == w.shape, f"shape {tuple(g.shape)} != {tuple(w.shape)}"
    return (g - w).abs().max().item(), ((g - w).norm() / w.norm().clamp_min(1e-30)).item()


def rel_err(got: Any, want: Any) -> float:
    """Relative L2 error of `got` against `want`."""
    return errors(got, want)[1]


def assert_close(name: str, got: Any, want: Any, max_abs: float | Mapping[torch.dtype, float] = 1e-4,
                 rel_l2: float | None = 1e-5) -> None:
    """Print `name`'s errors (the numbers a parity run reports) and assert both bounds.

    `max_abs` may be a bound per dtype of `want`; `rel_l2=None` bounds the maximum only.
    """
    if isinstance(max_abs, Mapping):
        max_abs = max_abs[want.dtype]
    mx, rel = errors(got if isinstance(got, torch.Tensor) else torch.as_tensor(np.asarray(got)), want)
    print(f"{name:36s} max_abs {mx:.3e}  rel_l2 {rel:.3e}")
    assert mx <= max_abs and (rel_l2 is None or rel <= rel_l2), f"{name}: max abs {mx:.3e}, rel L2 {rel:.3e}"
