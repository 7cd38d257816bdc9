"""The kernel's name for the calling thread (prctl PR_SET_NAME), so `top -H`, `ps -L`, py-spy and /proc show the
daemon's loops by name (ftl-render, ftl-broadcast, ...). Linux only; a no-op where it cannot be set."""

from __future__ import annotations

import ctypes
import sys

PR_SET_NAME = 15
NAME_MAX = 15  # the kernel keeps 15 bytes plus the terminating NUL


def name_os_thread(name: str) -> bool:
    """Name the calling thread; True when the kernel took the name."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:NAME_MAX]), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
