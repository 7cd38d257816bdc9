"""Faults of the box under the spool: a full disk, and a spool file SQLite cannot read.

queue/spool.py is the queue (its order, its states, its transactions); this module keeps it going when the machine
fails under it. Both faults end in a queue that still works, never in a room off air:

* **A full disk.** `DiskReserve` holds a file of `storage.spool_reserve_bytes` in the spool's folder. A write that
  moves a clip already acknowledged (take, untake, requeue, finish, cancel, move, clear, recover: run through
  `DiskReserve.state_change`) that finds the disk full deletes the reserve and is tried once more, so acknowledged
  clips still go from pending to playing to finished. A new clip on a full disk is refused with `disk_full`
  (`refusing_full_disk`): the reserve is kept for the clips already promised. The daemon puts the reserve back
  (`Spool.ensure_reserve`) once the disk watermark says the disk has room again (storage.py: `disk_low`/`disk_ok`).
* **An unreadable file.** `open_or_quarantine` opens the database; a file SQLite cannot read (not a database, a
  failed quick_check) is moved aside with a UTC timestamp, never deleted, with its -wal and -shm, and a fresh spool
  is opened in its place, so the room goes on air empty. The daemon reports it (log and `spool_quarantined` event,
  `storage.spool_quarantined` in status); `flashtalk-live spool salvage` (queue/salvage.py) queues the clips still
  readable in the file again.

`SpoolError` is defined here, below the spool, because the faults raise its `disk_full` kind; queue/spool.py
exports it with the rest of the queue's errors.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from flashtalk_live.errors import Rejection

T = TypeVar("T")
RESERVE_BYTES = 16 * 1024**2  # room for the WAL pages of state changes once the disk is full


class SpoolError(Rejection):
    """A spool operation failed; `code` is a protocol rejection code (queue_full, oversize, disk_full, internal)."""


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path` (-1 if unknown)."""
    try:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
    except OSError:
        return -1


def is_disk_full(e: BaseException) -> bool:
    """SQLite's and the OS's ways of saying the file system has no room."""
    if isinstance(e, sqlite3.OperationalError):
        text = str(e).lower()
        return "full" in text or "disk i/o" in text
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)


class SpoolDiskFull(SpoolError):
    """The file system under the spool has no room for this write."""

    def __init__(self, path: Path, error: BaseException) -> None:
        self.free_bytes = free_bytes(path)
        super().__init__("disk_full", f"no space left for the spool in {path} ({self.free_bytes} bytes free): {error}")


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a created or renamed file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def refusing_full_disk(folder: Path) -> Iterator[None]:
    """Around the write of a new clip: SQLite's full-disk error becomes SpoolDiskFull (`disk_full`), the reserve
    untouched."""
    try:
        yield
    except sqlite3.OperationalError as e:
        if is_disk_full(e):
            raise SpoolDiskFull(folder, e) from None
        raise


class DiskReserve:
    """A file of `size` bytes at `path`, given back to the file system when the disk fills (see the module
    docstring). `released`: the reserve has been spent and not yet put back."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path, self.size = path, size
        self.released = False

    def ensure(self) -> bool:
        """(Re)create the reserve file when the disk has room for it; True when it is in place. A reserve that cannot
        be made counts as released (not in place), so the daemon tries again once the disk has room."""
        if self.size <= 0:  # no reserve configured: nothing to make
            self.released = False
            return True
        try:
            if self.path.exists() and self.path.stat().st_size >= self.size:
                self.released = False
                return True
            with open(self.path, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, self.size)
            self.released = False
            return True
        except OSError:
            try:
                self.path.unlink()
            except OSError:
                pass
            self.released = True
            return False

    def release(self) -> bool:
        """Give the reserve's bytes back to the file system; False when there was none to give."""
        try:
            self.path.unlink()
        except OSError:
            return False
        self.released = True
        return True

    def state_change(self, fn: Callable[[], T]) -> T:
        """A change to clips already acknowledged: on a full disk, spend the reserve and try once more."""
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not is_disk_full(e):
                raise
            if not self.release():
                raise SpoolDiskFull(self.path.parent, e) from None
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if is_disk_full(e):
                raise SpoolDiskFull(self.path.parent, e) from None
            raise


def quarantine(db_path: Path) -> Path:
    """Move an unreadable database (and its -wal, -shm) aside with a timestamp, never deleted; returns where."""
    folder = db_path.parent
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = folder / f"{db_path.name}.corrupt-{stamp}"
    n = 1
    while aside.exists():
        aside = folder / f"{db_path.name}.corrupt-{stamp}-{n}"
        n += 1
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(db_path) + suffix)
        if src.exists():
            os.replace(src, Path(str(aside) + suffix))
    fsync_dir(folder)
    return aside


def open_or_quarantine(db_path: Path, connect: Callable[[], sqlite3.Connection],
                       reserve: DiskReserve) -> tuple[sqlite3.Connection, tuple[Path, str] | None]:
    """`connect()` (which raises sqlite3.DatabaseError for a file that is not a sound spool) with the box's faults
    handled: a full disk spends the reserve first (SpoolDiskFull if that is not enough room), an unreadable file is
    quarantined and a fresh one opened. Returns the connection and (where the file went, why), or None."""
    try:
        return connect(), None
    except sqlite3.DatabaseError as e:
        if is_disk_full(e):
            if reserve.release():
                return connect(), None
            raise SpoolDiskFull(db_path.parent, e) from None
        if isinstance(e, sqlite3.OperationalError):
            # locked, busy, cannot open: a fault of the moment or of the box, not of the file (a damaged file says
            # "not a database" or "malformed", a DatabaseError): a readable queue is never moved aside for it
            raise
        moved = (quarantine(db_path), f"{type(e).__name__}: {e}")
        return connect(), moved
