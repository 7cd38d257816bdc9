"""Comparing tensors in parity and numerics tests: one definition of the errors the tests bound."""

from __future__ import annotations

from typing import Any

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
