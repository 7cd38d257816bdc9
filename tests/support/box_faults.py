"""Helpers shared by the box-fault tests (issue 12): idle-connection floods, scrapes, damaged files."""

from __future__ import annotations

import os
import socket
import urllib.request
from pathlib import Path


def idle_connections(port: int, n: int) -> list[socket.socket]:
    """Open n idle TCP connections to a loopback port (non-blocking connects: a full backlog never stalls us)."""
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    return socks


def scrape(port: int) -> str | None:
    """The metrics page, or None while it cannot be had."""
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    except OSError:
        return None


# -- ways to damage a database file -----------------------------------------------------------------

def truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


def garbage(f: Path) -> None:
    f.write_bytes(os.urandom(f.stat().st_size))


def zero_header(f: Path) -> None:
    with open(f, "r+b") as fh:
        fh.write(b"\0" * 100)


def zero_length(f: Path) -> None:
    f.write_bytes(b"")


def fill(fs: Path, name: str = "ballast", leave: int = 0) -> Path:
    """Take every byte of the file system but `leave` (all of them by default): a real ENOSPC for everyone else."""
    ballast = fs / name
    with open(ballast, "ab", buffering=0) as f:
        if leave:
            st = os.statvfs(fs)
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
            return ballast
        for block in (1 << 20, 65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * block)
            except OSError:
                pass
    return ballast
