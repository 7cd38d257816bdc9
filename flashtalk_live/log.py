"""structlog set-up: JSON lines under systemd or when piped, coloured console in a terminal; secrets masked."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import structlog

_URL_SECRET = re.compile(r"(rtmps?://[^\s/'\"]+/[^\s/'\"?]+)/[^\s'\"]+")
_CRED = re.compile(r"(://)[^/\s:@'\"]+:[^/\s@'\"]+@")


def scrub(text: str) -> str:
    """Remove stream keys and user:password from any rtmp(s) URL inside a string."""
    text = _CRED.sub(r"\1***@", text)
    return _URL_SECRET.sub(r"\1/****", text)


def _scrub_processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for k, v in list(event_dict.items()):
        if isinstance(v, str) and "://" in v:
            event_dict[k] = scrub(v)
        elif isinstance(v, BaseException):
            event_dict[k] = scrub(repr(v))
    return event_dict


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (it may be swapped after configure, e.g. by test capture)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Install the processors once per process. fmt: auto | json | console."""
    stream = stream or _CurrentStderr()
    if fmt == "auto":
        under_systemd = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
        fmt = "console" if (stream.isatty() and not under_systemd) else "json"
    renderer: Any = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrub_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **bound: Any) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name).bind(component=name, **bound)
