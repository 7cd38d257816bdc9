"""structlog set-up: JSON lines under systemd or when piped, coloured console in a terminal; secrets masked in
every field, and in tracebacks that reach stderr through the interpreter's own excepthooks."""

from __future__ import annotations

import logging
import os
import sys
import threading
import traceback
from types import TracebackType
from typing import Any, MutableMapping

import structlog

from flashtalk_live.secrets import mask_obj, mask_text


def _mask_processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in list(event_dict.items()):
        event_dict[k] = mask_text(repr(v)) if isinstance(v, BaseException) else mask_obj(v)
    return event_dict


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (it may be swapped after configure, e.g. by test capture)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def masked_traceback(exc: BaseException) -> str:
    """The full traceback of `exc` (chained causes included) with every URL masked."""
    return mask_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def _excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    sys.stderr.write(mask_text("".join(traceback.format_exception(exc_type, exc, tb))))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(mask_text(f"Exception in thread {name}:\n{text}"))


def install_excepthooks() -> None:
    """Uncaught exceptions (main thread and others) print their traceback masked."""
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook


def configure(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Install the processors once per process. fmt: auto | json | console."""
    stream = stream or _CurrentStderr()
    install_excepthooks()
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
            _mask_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **bound: Any) -> structlog.stdlib.BoundLogger:
    # A lazy proxy, not .bind(): a module-level logger made before configure() must follow it, not freeze the
    # defaults (console renderer, no masking processor) at import time.
    return structlog.get_logger(name, component=name, **bound)
