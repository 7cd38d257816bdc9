"""Shared test fixtures: a real nginx-rtmp server on loopback, recording readers, and small fault servers.

``nginx_rtmp`` is a factory: ``srv = nginx_rtmp()`` starts one server on free ports with its own
config (daemon off, record all, record_unique on); ``srv.url("name")`` is the publish URL,
``srv.recordings("name")`` the FLV files it wrote (one per publish session). ``srv.kill()`` /
``srv.restart()`` (same ports) and ``srv.stop()`` / ``srv.cont()`` (SIGSTOP/SIGCONT) inject faults.
``read_media(path)`` reads a recording with PyAV. ``mute_server`` accepts TCP and never reads or
answers; ``refused_port`` is a port nobody listens on.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from support.rtmp_harness import NginxRtmp, _nginx_available, free_port


@pytest.fixture
def nginx_rtmp(tmp_path: Path) -> Iterator[Callable[[], NginxRtmp]]:
    """Factory of nginx-rtmp servers; every one is SIGKILLed (process group) at teardown."""
    missing = _nginx_available()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"nginx-rtmp is required in CI: {missing}")
        pytest.skip(missing)
    servers: list[NginxRtmp] = []

    def make() -> NginxRtmp:
        srv = NginxRtmp(prefix=tmp_path / f"nginx{len(servers)}", rtmp_port=free_port(), http_port=free_port())
        servers.append(srv)
        srv.start()
        return srv

    try:
        yield make
    finally:
        for srv in servers:
            if srv.proc is not None and srv.proc.poll() is None:
                try:
                    os.killpg(srv.proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            srv.kill()


# -- small fault servers --------------------------------------------------------------------------


@dataclass
class MuteServer:
    """Accepts TCP connections and never reads or answers (an RTMP peer stuck before the handshake)."""

    port: int
    sock: socket.socket
    conns: list[socket.socket] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def url(self, name: str = "test") -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{name}"

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
                self.conns.append(c)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def mute_server() -> Iterator[MuteServer]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    srv = MuteServer(port=s.getsockname()[1], sock=s)
    t = threading.Thread(target=srv._accept, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.close()
        t.join(timeout=2)


@pytest.fixture
def refused_port() -> int:
    """A loopback port with no listener: connecting is refused at once."""
    return free_port()


def rtmp_url(port: int, name: str = "test") -> str:
    return f"rtmp://127.0.0.1:{port}/live/{name}"


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """Factory: mount a tmpfs of `size` (e.g. "4m") at a new folder `path`: a real ENOSPC from the kernel."""
    import subprocess

    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], check=False)


# -- the order of the run: two queues under `pytest -n 2`, background jobs in one process --------------------------


# Under `pytest -n 2` (the README's test command; `--dist loadgroup` comes from pyproject.toml) the run is two
# queues side by side: the end-to-end tests (real daemons on the air's real-time clock, mostly waiting: about a tenth
# of a core each) one after another, and every other test (CPU-bound model, compose, checkpoint and unit tests; torch
# on one thread, so a core stays free for the daemons) one after another. A test marked `alone` has the box to itself
# (tests/support/box.py).
TESTS = Path(__file__).resolve().parent
REAL_TIME = TESTS / "e2e"


def _xdist_worker() -> bool:
    return "PYTEST_XDIST_WORKER" in os.environ


def _real_time(item: pytest.Item) -> bool:
    return Path(item.path).resolve().is_relative_to(REAL_TIME)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test joins its queue (above). The container image's tests: in one process they run last, so that their
    build (a background job) has the whole run to finish in; under `pytest -n N` (no background jobs: each worker
    collects every test) they come first in their queue, so the build starts at once."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group("real-time" if _real_time(item) else "cpu"))
    last = not _xdist_worker()
    items.sort(key=lambda item: (item.get_closest_marker("image") is not None) == last)  # stable sort


_box: list = []  # the BoxLock of this worker (tests/support/box.py), under `pytest -n N` only
_threads: dict[str, Any] = {}  # this worker's torch threads and OMP_NUM_THREADS before the first "cpu" test


def _torch_threads(one: bool) -> None:
    """One torch thread for a "cpu" test (and the processes it starts), the defaults back for a real-time one."""
    import torch

    if not _threads:
        _threads.update(torch=torch.get_num_threads(), omp=os.environ.get("OMP_NUM_THREADS"))
    torch.set_num_threads(1 if one else _threads["torch"])
    omp = "1" if one else _threads["omp"]
    if omp is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = str(omp)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Under `pytest -n N`: the box shared for every test, alone for a test marked `alone` (taken before
    pytest-timeout starts the test's clock, held through its teardown); torch threads as the test's queue wants."""
    if not _xdist_worker():
        yield
        return
    if not _box:
        from support.box import BoxLock

        _box.append(BoxLock(Path(item.config.option.basetemp).parent / "box"))
    _torch_threads(one=not _real_time(item))
    _box[0].acquire(alone=item.get_closest_marker("alone") is not None)
    try:
        yield
    finally:
        _box[0].release()


_background_scratch: list[Path] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """Starts the background job of every module with a test in this session."""
    import tempfile

    from support.background import JOBS

    if session.config.option.collectonly or _xdist_worker():
        return
    wanted = {str(Path(item.path).resolve()) for item in session.items}
    todo = [job for module, job in JOBS.items() if module in wanted and not job.started]
    if todo:
        _background_scratch.append(Path(tempfile.mkdtemp(prefix="pytest-background-")))
        for job in todo:
            job.start(_background_scratch[-1] / job.name)


def pytest_sessionfinish(session: pytest.Session) -> None:
    import shutil

    from support.background import JOBS

    for job in JOBS.values():
        job.kill()
    for scratch in _background_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
