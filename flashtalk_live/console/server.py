"""The HTTP server of /metrics and the console: a threaded WSGI server (one thread per connection, so an open
/preview.mjpeg stream never blocks a scrape), started in a daemon thread like prometheus_client's own."""

from __future__ import annotations

import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # requests are not logged line by line (scrapes every few seconds would flood the log)


def serve_app(host: str, port: int, app: Any) -> tuple[_ThreadingServer, threading.Thread]:
    """Bind host:port (0 picks a free port) and serve `app` in a daemon thread; OSError when it cannot bind."""
    server_cls = _ThreadingServer
    if ":" in host.strip("[]"):
        server_cls = type("_ThreadingServer6", (_ThreadingServer,), {"address_family": socket.AF_INET6})
    httpd = make_server(host.strip("[]"), port, app, server_cls, handler_class=_QuietHandler)
    t = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
    t.start()
    return httpd, t
