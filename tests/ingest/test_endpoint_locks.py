"""An ipc socket belongs to one live server: a second one on the same path is refused (a ConfigError naming the
holder's pid), a socket file that no live process holds is replaced, and stopping one server never deletes another's
socket."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys

import pytest

from flashtalk_live.client import Client
from flashtalk_live.events import EventBus
from flashtalk_live.ingest.server import IngestConfigError, IngestServer
from flashtalk_live.queue.spool import Spool
from flashtalk_live.settings import ConfigError
from flashtalk_live.statelock import EndpointBusy, socket_lock_path


def _server(make_settings, *extra: str, note: str = "") -> tuple[IngestServer, Spool]:
    s = make_settings('ingest.control=["ipc://{state_dir}/control.sock"]', 'ingest.events=[]', *extra)
    spool = Spool.from_settings(s.expanded(s.queue), s.encoder, s.storage)
    return IngestServer(s.expanded(s.ingest), s.encoder, spool, EventBus(), lock_note=note), spool


def test_second_server_on_a_live_socket_is_refused_and_cannot_delete_it(make_settings, state_dir):
    first, spool = _server(make_settings, note="room A")
    first.start()
    sock = state_dir / "control.sock"
    try:
        # another process (another room's daemon) on the same path
        code = (f"import sys; sys.path[:0] = {sys.path!r}\n"
                "from flashtalk_live.config import load_settings\n"
                "from flashtalk_live.ingest.server import IngestServer\n"
                "from flashtalk_live.events import EventBus\n"
                f"s = load_settings(None, ['state_dir=\"{state_dir}/other\"', "
                f"'ingest.control=[\"ipc://{sock}\"]', 'ingest.events=[]'], environ={{}})\n"
                "srv = IngestServer(s.expanded(s.ingest), s.encoder, None, EventBus())\n"
                "try:\n    srv.start()\nexcept Exception as e:\n"
                "    print(type(e).__name__, isinstance(e, ValueError), e); raise SystemExit(2)\n")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stdout.startswith("EndpointBusy True ") and f"pid {os.getpid()}, room A" in r.stdout, r.stdout
        assert "\n" not in r.stdout.strip()
        # in this process too (the lock is per open file: a second holder in one process is refused as well)
        s = make_settings('ingest.control=["ipc://{state_dir}/control.sock"]', 'ingest.events=[]')
        second = IngestServer(s.expanded(s.ingest), s.encoder, None, EventBus())  # type: ignore[arg-type]  # refused before the spool is needed
        with pytest.raises(EndpointBusy) as ei:
            second.start()
        assert isinstance(ei.value, ConfigError) and f"ipc://{sock}" in str(ei.value)
        assert stat.S_ISSOCK(sock.lstat().st_mode)
        with Client(f"ipc://{sock}", timeout_s=5) as c:
            assert c.ping()["pong"]  # the first server still answers on its socket
    finally:
        first.stop()
        spool.close()
    assert not sock.exists() and socket_lock_path(sock).exists()
    again, spool = _server(make_settings)  # the lock was released with the stop
    again.start()
    again.stop()
    spool.close()


def test_stale_socket_file_is_replaced(make_settings, state_dir):
    sock = state_dir / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))  # a crashed daemon's file: nobody listens, nobody holds the lock
    stale.close()
    assert stat.S_ISSOCK(sock.lstat().st_mode)
    srv, spool = _server(make_settings)
    srv.start()
    try:
        with Client(f"ipc://{sock}", timeout_s=5) as c:
            assert c.ping()["pong"]
    finally:
        srv.stop()
        spool.close()


def test_busy_tcp_port_is_a_config_error(make_settings):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        srv, spool = _server(make_settings, 'ingest.tcp_auth="none"',
                             f'ingest.control=["ipc://{{state_dir}}/control.sock", "tcp://127.0.0.1:{port}"]')
        with pytest.raises(IngestConfigError, match="the address is in use") as ei:
            srv.start()
        spool.close()
    assert isinstance(ei.value, ConfigError)
    # nothing stays bound or locked: the same server starts once the port is free
    srv, spool = _server(make_settings, 'ingest.tcp_auth="none"',
                         'ingest.control=["ipc://{state_dir}/control.sock", "tcp://127.0.0.1:0"]')
    srv.start()
    srv.stop()
    spool.close()


def test_a_lock_path_that_is_a_symlink_is_refused_not_followed(tmp_path):
    """`<socket>.lock` lies beside an ipc socket, often in a shared folder: a symlink planted there made the daemon
    truncate and overwrite whatever file it named (with its pid). It is refused, as a configuration error."""
    from flashtalk_live.settings import ConfigError
    from flashtalk_live.statelock import FileLock, socket_lock_path

    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    sock = tmp_path / "shared" / "control.sock"
    sock.parent.mkdir()
    socket_lock_path(sock).symlink_to(victim)
    with pytest.raises(ConfigError, match="control.sock.lock"):
        FileLock(socket_lock_path(sock), "room A").acquire()
    assert victim.read_text() == "precious\n"
