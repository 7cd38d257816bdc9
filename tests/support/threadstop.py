"""Stop ONE thread of another process and resume it, leaving its other threads running (ptrace SEIZE + INTERRUPT).

SIGSTOP cannot do this: a stop signal always stops the whole thread group, and a stopped process answers no HTTP at
all. The liveness test uses this to freeze a real daemon's broadcast loop from outside, with no hook in the daemon,
while its HTTP thread keeps answering probes. Needs CAP_SYS_PTRACE (or a same-user tracee under a permissive Yama).
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000  # __WALL: wait for any child or traced thread

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
_libc.ptrace.restype = ctypes.c_long


def _ptrace(request: int, tid: int) -> None:
    if _libc.ptrace(request, tid, None, None) == -1:
        e = ctypes.get_errno()
        raise OSError(e, f"ptrace({request:#x}, {tid}): {os.strerror(e)}")


def thread_ids(pid: int, comm: str) -> list[int]:
    """The threads of `pid` whose kernel name is `comm`, oldest first (start time, then id): threads a thread starts
    inherit its name, so the first one is the thread that was named."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != comm:
                continue
            stat = (task / "stat").read_text()
            start = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22: starttime
        except (OSError, ValueError):
            continue
        found.append((start, int(task.name)))
    return [tid for _, tid in sorted(found)]


@contextmanager
def thread_stopped(tid: int) -> Iterator[None]:
    """The thread `tid` is stopped (in a ptrace stop) inside the block and runs on after it."""
    _ptrace(PTRACE_SEIZE, tid)
    try:
        _ptrace(PTRACE_INTERRUPT, tid)
        os.waitpid(tid, WALL)
        yield
    finally:
        _ptrace(PTRACE_DETACH, tid)
