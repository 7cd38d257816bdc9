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


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # requests are not logged line by line (scrapes every few seconds would flood the log)


def serve_app(host: str, port: int, app: Any, *, max_connections: int = 16, timeout_s: float = 5.0,
              log: Any = None) -> tuple[_ThreadingServer, threading.Thread]:
    """Bind host:port (0 picks a free port) and serve `app` in a daemon thread; OSError when it cannot bind.
    At most `max_connections` at once; a request idle for `timeout_s` is dropped (a preview stream is not idle)."""
    fields: dict[str, Any] = {"max_connections": max_connections, "log": log}
    if ":" in host.strip("[]"):
        fields["address_family"] = socket.AF_INET6
    server_cls = type("_CappedServer", (_ThreadingServer,), fields)
    handler = type("_Handler", (_QuietHandler,), {"timeout": timeout_s})
    httpd = make_server(host.strip("[]"), port, app, server_cls, handler_class=handler)
    t = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
    t.start()
    return httpd, t
