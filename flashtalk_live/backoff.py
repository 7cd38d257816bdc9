"""Exponential backoff with +-jitter, for everything that retries (outputs reconnecting, the renderer reloading)."""

from __future__ import annotations

import random


class Backoff:
    """Delays initial, 2 x initial, ... up to max_s, each +-jitter (a fraction); reset() after a success that held."""

    def __init__(self, initial_s: float, max_s: float, jitter: float = 0.0, rng: random.Random | None = None) -> None:
        self.initial_s, self.max_s, self.jitter = initial_s, max_s, jitter
        self.rng = rng or random.Random()
        self.current = initial_s

    def next_delay(self) -> float:
        d = self.current * (1.0 + self.jitter * self.rng.uniform(-1.0, 1.0))
        self.current = min(self.current * 2.0, self.max_s)
        return max(0.0, min(d, self.max_s))

    def reset(self) -> None:
        self.current = self.initial_s
