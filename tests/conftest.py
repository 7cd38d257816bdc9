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
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

NGINX = "/usr/sbin/nginx"
RTMP_MODULE = "/usr/lib/nginx/modules/ngx_rtmp_module.so"

_CONF = """\
load_module {module};
{user}
daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr info;
events {{ worker_connections 256; }}
rtmp {{
    server {{
        listen 127.0.0.1:{rtmp_port};
        chunk_size 4096;
        application live {{
            live on;
            record all;
            record_path {prefix}/rec;
            record_unique on;
            allow publish 127.0.0.1; deny publish all; allow play all;
        }}
    }}
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body; proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi; uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{ listen 127.0.0.1:{http_port}; location /stat {{ rtmp_stat all; }} }}
}}
"""


def free_port() -> int:
    """A loopback port that was free a moment ago (bind 0, release)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nginx_available() -> str | None:
    if not os.path.exists(NGINX):
        return f"{NGINX} is missing (apt-get install nginx libnginx-mod-rtmp)"
    if not os.path.exists(RTMP_MODULE):
        return f"{RTMP_MODULE} is missing (apt-get install libnginx-mod-rtmp)"
    return None


@dataclass
class NginxRtmp:
    """One nginx-rtmp server owned by a test."""

    prefix: Path
    rtmp_port: int
    http_port: int
    proc: subprocess.Popen | None = None
    log: list[str] = field(default_factory=list)

    @property
    def rec_dir(self) -> Path:
        return self.prefix / "rec"

    def url(self, name: str = "test") -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/live/{name}"

    @property
    def stat_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/stat"

    def stat(self) -> str:
        with urllib.request.urlopen(self.stat_url, timeout=2) as r:
            return r.read().decode()

    def recordings(self, name: str = "test") -> list[Path]:
        """This stream's recordings, oldest first (record_unique appends a timestamp; mtime breaks ties)."""
        files = [p for p in self.rec_dir.glob(f"{name}*.flv") if p.stat().st_size > 0]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def start(self) -> None:
        for d in ("rec", "tmp"):
            (self.prefix / d).mkdir(parents=True, exist_ok=True)
        os.chmod(self.rec_dir, 0o777)  # the worker runs as nobody when started as root
        conf = self.prefix / "nginx.conf"
        # As root the worker would run as nobody, which cannot enter pytest's 0700 tmp directories.
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(_CONF.format(module=RTMP_MODULE, user=user, prefix=self.prefix, rtmp_port=self.rtmp_port,
                                     http_port=self.http_port))
        self.proc = subprocess.Popen([NGINX, "-p", str(self.prefix), "-c", str(conf), "-e", "stderr"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        threading.Thread(target=self._pump, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n" + "\n".join(self.log[-20:]))
            try:
                socket.create_connection(("127.0.0.1", self.rtmp_port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start listening within 10 s") from None
                time.sleep(0.005)
        time.sleep(0.02)
        if self.proc.poll() is not None:  # a stale server on the port answered the probe, ours died
            raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n" + "\n".join(self.log[-20:]))

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.log.append(line.decode(errors="replace").rstrip())

    def kill(self) -> None:
        """SIGKILL master and worker together (a crash, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same ports (same record directory)."""
        self.kill()
        deadline = time.monotonic() + 10
        while True:  # the kernel may need a moment to release the listening port
            try:
                self.start()
                return
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGSTOP: the server stops reading but keeps every socket open."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def cont(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)


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


# -- reading recordings back: see rtmp_harness.py (re-exported for older imports) --------------------
from rtmp_harness import MediaInfo, max_gap, read_media  # noqa: E402,F401


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


__all__: list[Any] = ["NginxRtmp", "MediaInfo", "read_media", "max_gap", "free_port", "rtmp_url"]
