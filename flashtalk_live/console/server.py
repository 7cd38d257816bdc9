"""The HTTP server of /metrics and the console: a threaded WSGI server (one thread per connection, so an open
/preview.mjpeg stream never blocks a scrape), started in a daemon thread like prometheus_client's own."""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flashtalk_live.metrics import ConnectionCap


class _ThreadingServer(ConnectionCap, ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64


READ_DONE = "flashtalk.read_done"  # environ key: call it once the request (headers, and a body read) has arrived


class _QuietHandler(WSGIRequestHandler):
    """Requests are not logged line by line (scrapes every few seconds would flood the log). The whole request must
    arrive within `read_deadline_s` of the connection's accept: a timer ends the connection then unless the app
    called environ[READ_DONE] (a slowloris sending one byte every few seconds cannot hold its slot longer)."""

    read_deadline_s = 5.0

    def setup(self) -> None:
        super().setup()
        self._deadline = threading.Timer(self.read_deadline_s, self._read_expired)
        self._deadline.daemon = True
        self._deadline.start()

    def _read_expired(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def get_environ(self) -> dict[str, Any]:
        env = super().get_environ()
        env[READ_DONE] = self._deadline.cancel
        return env

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


def serve_app(host: str, port: int, app: Any, *, max_connections: int = 16, timeout_s: float = 5.0,
              read_deadline_s: float = 5.0, log: Any = None) -> tuple[_ThreadingServer, threading.Thread]:
    """Bind host:port (0 picks a free port) and serve `app` in a daemon thread; OSError when it cannot bind.
    At most `max_connections` at once; a request idle for `timeout_s`, or not arrived whole within
    `read_deadline_s`, is dropped (a preview stream, once asked for, is neither)."""
    fields: dict[str, Any] = {"max_connections": max_connections, "log": log}
    if ":" in host.strip("[]"):
        fields["address_family"] = socket.AF_INET6
    server_cls = type("_CappedServer", (_ThreadingServer,), fields)
    handler = type("_Handler", (_QuietHandler,), {"timeout": timeout_s, "read_deadline_s": read_deadline_s})
    httpd: Any = make_server(host.strip("[]"), port, app, server_cls, handler_class=handler)
    t = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
    t.start()
    return httpd, t
