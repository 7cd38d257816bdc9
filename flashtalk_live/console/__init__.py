"""The operator console: a page, a JSON API and a live preview of the air, served with /metrics by the daemon."""

from __future__ import annotations

import socket
from typing import Any, Callable

from prometheus_client import make_wsgi_app

from flashtalk_live.console.app import Console
from flashtalk_live.console.auth import resolve_token
from flashtalk_live.console.preview import AirTap
from flashtalk_live.console.server import serve_app
from flashtalk_live.events import EventBus
from flashtalk_live.ingest.server import IngestServer
from flashtalk_live.metrics import metrics_registry
from flashtalk_live.probes import RoomProbes
from flashtalk_live.settings import ConsoleSettings, MetricsSettings

__all__ = ["AirTap", "Console", "console_url", "resolve_token", "start_console"]


def console_url(host: str, port: int) -> str:
    """The page's address for the start-up log: the bound host (this machine's name for a wildcard bind)."""
    h = host.strip("[]")
    if h in ("", "0.0.0.0", "::"):
        h = socket.gethostname()
    return f"http://[{h}]:{port}/" if ":" in h else f"http://{h}:{port}/"


def start_console(console_settings: ConsoleSettings, m: MetricsSettings, ingest: IngestServer, events: EventBus,
                  tap: AirTap, token: str, status_provider: Callable[[], dict[str, Any]],
                  probes: RoomProbes | None = None) -> tuple[Any, Console]:
    """Serve the console, /metrics and the health probes on metrics.host:metrics.port; returns (http server,
    console)."""
    console = Console(console_settings, m.host, ingest, events, tap, token,
                      make_wsgi_app(metrics_registry(status_provider)), probes)
    try:
        httpd, _ = serve_app(m.host, m.port, console, max_connections=console_settings.max_connections,
                             timeout_s=m.timeout_s, read_deadline_s=console_settings.read_deadline_s)
    except BaseException:
        console.close()
        raise
    return httpd, console
