"""One daemon per state directory: an flock on `{state_dir}/daemon.lock` (the holder's pid written inside).

A second daemon on the same state dir would steal the first one's ipc sockets and play its queue twice. `run` holds
the lock for the daemon's whole life; `config show` only probes it, so both report the same one-line error.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from flashtalk_live.settings import ConfigError

LOCK_NAME = "daemon.lock"


class StateDirBusy(ConfigError):
    """Another live process holds the state directory."""

    def __init__(self, state_dir: Path, holder: str) -> None:
        super().__init__(f"state_dir = {str(state_dir)!r}: in use by another daemon ({holder}); expected a state "
                         f"directory no running daemon uses (stop that one, or set --state-dir / state_dir)")


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"


class StateLock:
    """Held from acquire() to release() (or the process's end: the kernel drops an flock with its file)."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir).expanduser()
        self.path = self.state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "StateLock":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StateDirBusy(self.state_dir, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race a new holder)
            self._fd = None

    def __enter__(self) -> "StateLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_free(state_dir: str | os.PathLike[str]) -> None:
    """StateDirBusy when a live daemon holds `state_dir`; creates nothing."""
    path = Path(state_dir).expanduser() / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StateDirBusy(path.parent, _holder(fd)) from None
    finally:
        os.close(fd)
