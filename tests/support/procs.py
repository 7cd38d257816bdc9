"""Processes the tests start in a session of their own (nginx-rtmp, background jobs): killed as a whole group."""

from __future__ import annotations

import os
import signal
import subprocess


def kill_group(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGKILL `proc`'s process group (the process and its children: a crash, not a shutdown) unless it ended."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout_s)
