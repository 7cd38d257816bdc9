"""Exclusive locks of a room: an flock on `{state_dir}/daemon.lock`, and one on `<socket>.lock` beside every ipc
socket the daemon binds. The holder's pid (and state directory) are written inside, for the refusal's one line.

A second daemon on the same state dir would steal the first one's ipc sockets and play its queue twice; a second
daemon on the same ipc path (another state dir, a copied config) would take the socket over and, when it stops,
delete it under the first. `run` holds the locks for the daemon's whole life (the kernel drops an flock with its
process, so a crash leaves no stale lock); `config show` only probes them, so both report the same one-line error.
A socket file with no lock holder is stale: the new holder replaces it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from flashtalk_live.settings import ConfigError

LOCK_NAME = "daemon.lock"
SOCKET_LOCK_SUFFIX = ".lock"


class StateDirBusy(ConfigError):
    """Another live process holds the state directory."""

    def __init__(self, state_dir: Path, holder: str) -> None:
        super().__init__(f"state_dir = {str(state_dir)!r}: in use by another daemon ({holder}); expected a state "
                         f"directory no running daemon uses (stop that one, or set --state-dir / state_dir)")


class EndpointBusy(ConfigError):
    """Another live daemon holds an ipc path (or a port is taken): the operator gives each room its own."""


class LockHeld(Exception):
    """The lock is held by another live process; `holder` says which ("pid 123, room roomA in /var/lib/...")."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
    except OSError:
        text = ""
    pid, _, rest = text.partition("\n")
    pid, note = pid.strip(), rest.strip()
    who = f"pid {pid}" if pid.isdigit() else "pid unknown"
    return f"{who}, {note}" if note else who


class FileLock:
    """An flock on `path`, held from acquire() to release() (or the process's end). acquire() raises LockHeld."""

    def __init__(self, path: str | os.PathLike[str], note: str = "") -> None:
        self.path = Path(path).expanduser()
        self.note = note  # one line written after the pid: which room holds it
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # O_NOFOLLOW: the lock beside an ipc socket may lie in a shared folder; a symlink planted there would have
            # the daemon truncate and overwrite the file it names
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise ConfigError(f"{self.path}: cannot open this lock file ({e.strerror}); expected a regular file "
                              "(not a symlink) in a folder this user may write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LockHeld(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{self.note}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race a new holder)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def probe(path: str | os.PathLike[str]) -> str | None:
    """Who holds the lock file `path` (LockHeld's holder text), or None when no live process does; creates nothing."""
    try:
        fd = os.open(Path(path).expanduser(), os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)
    return None


class StateLock:
    """The state directory's lock: StateDirBusy when another daemon holds it."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir).expanduser()
        self.path = self.state_dir / LOCK_NAME
        self._lock = FileLock(self.path)

    def acquire(self) -> "StateLock":
        try:
            self._lock.acquire()
        except LockHeld as e:
            raise StateDirBusy(self.state_dir, e.holder) from None
        return self

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> "StateLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_free(state_dir: str | os.PathLike[str]) -> None:
    """StateDirBusy when a live daemon holds `state_dir`; creates nothing."""
    path = Path(state_dir).expanduser()
    holder = probe(path / LOCK_NAME)
    if holder is not None:
        raise StateDirBusy(path, holder)


def socket_lock_path(socket_path: str | os.PathLike[str]) -> Path:
    """The lock file that guards an ipc socket file."""
    p = Path(socket_path)
    return p.with_name(p.name + SOCKET_LOCK_SUFFIX)


def endpoint_busy(field: str, endpoint: str, holder: str) -> EndpointBusy:
    return EndpointBusy(f"{field}: {endpoint} is in use by another room ({holder}); expected an ipc path no other "
                        "daemon uses (the shipped configs put each room's sockets under its {state_dir})")
