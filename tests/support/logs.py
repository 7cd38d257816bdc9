"""The daemon's JSON log lines captured in a test: configure the logger into a buffer, read back one event's lines."""

from __future__ import annotations

import io
import json

from flashtalk_live import log


def capture_logs() -> io.StringIO:
    """Route the package's logs, as JSON lines at info and above, into a fresh buffer."""
    buf = io.StringIO()
    log.configure("json", "info", stream=buf)
    return buf


def log_lines(buf: io.StringIO, event: str) -> list[dict]:
    """Every captured line of `event`, parsed."""
    return [d for d in map(json.loads, buf.getvalue().splitlines()) if d.get("event") == event]
