"""Model tests: deterministic CPU numerics (one thread), shared by the VAE tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """torch on one CPU thread for the module: float sums in one order, whatever the machine."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
