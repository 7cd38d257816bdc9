"""rtmps:// end to end: the daemon pushes over TLS to a TLS-terminating proxy in front of nginx-rtmp."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.daemon_harness import wait_for
from support.rtmp_harness import max_gap, read_media


class TlsProxy:
    """Accepts TLS on a loopback port and relays the plain bytes to `target_port` (one thread pair per client)."""

    def __init__(self, cert: Path, key: Path, target_port: int) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.handshakes = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            try:
                tls = self.ctx.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()
                continue
            self.handshakes += 1
            up = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((tls, up), (up, tls)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


@pytest.mark.rtmp
@pytest.mark.timeout(120)
def test_rtmps_output_streams_over_tls(tmp_path, daemon_factory, nginx_rtmp):
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    srv = nginx_rtmp()
    proxy = TlsProxy(cert, key, srv.rtmp_port)
    try:
        d = daemon_factory(outputs=[{"name": "secure", "url": f"rtmps://127.0.0.1:{proxy.port}/live/secure-key"}]).start()
        ev = d.events()
        with d.client() as c:
            ev.sync(c)
            wait_for(ev, lambda e: e["type"] == "endpoint_up" and e.get("output") == "secure", 30)
            time.sleep(4)
            st = {o["name"]: o for o in c.status()["outputs"]}["secure"]
        assert d.stop() == 0
    finally:
        proxy.close()
    assert st["state"] == "up" and "secure-key" not in st["url"]
    assert proxy.handshakes >= 1
    info = read_media(srv.recordings("secure")[0])
    assert (info.video_codec, info.audio_codec) == ("h264", "aac")
    assert info.video_end > 3 and max_gap(info.video_pts) <= 0.041
    assert "secure-key" not in d.log_path.read_text()  # the stream key never reaches the logs
