"""Free TCP ports for servers a test starts (RTMP, ZeroMQ tcp endpoints, torch.distributed rendezvous).

A port is drawn below the kernel's ephemeral range: a port the OS hands out for `bind(0)` comes from the range every
outgoing connection draws its local port from, so on a busy box (another worker's test opening thousands of
connections) it is taken between this check and the server's bind. CI failed on that three starts in a row."""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 10000  # above the well-known and registered ports services on a box listen on


def ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def bindable(host: str, port: int) -> bool:
    """Nothing holds host:port now, in any state (no SO_REUSEADDR: a TIME_WAIT left by an earlier server counts)."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing holds now, outside the ephemeral range where one is left below it; a test binds it soon after."""
    lo, _ = ephemeral_range()
    draw = random.SystemRandom()  # xdist workers must not share a seeded sequence
    if lo - LOWEST >= 1000:
        for _ in range(200):
            port = draw.randrange(LOWEST, lo)
            if bindable(host, port):
                return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
