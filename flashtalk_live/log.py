"""structlog set-up: JSON lines under systemd or when piped, coloured console in a terminal; secrets masked in
every field, and in tracebacks that reach stderr through the interpreter's own excepthooks."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
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


META_KEYS_LOGGED = 8  # a clip's meta is logged as its size and first keys, never its body


def meta_summary(meta: Any) -> dict[str, Any]:
    """A clip's `meta` as log fields: its JSON size and its first 8 keys (each cut to 40 characters), so a 60 KB meta
    costs a log line tens of bytes, not 60 KB."""
    if not isinstance(meta, dict) or not meta:
        return {"meta_bytes": 0}
    try:
        size = len(json.dumps(meta, default=str))
    except (ValueError, TypeError, RecursionError):
        size = -1
    return {"meta_bytes": size, "meta_keys": [str(k)[:40] for k in list(meta)[:META_KEYS_LOGGED]],
            **({"meta_keys_more": len(meta) - META_KEYS_LOGGED} if len(meta) > META_KEYS_LOGGED else {})}


class Throttle:
    """Lines a peer can cause (a refused handshake, a rejected request), bounded: per key, the first `burst` lines of
    each `interval_s` are logged in full, the rest only counted, and one `<event>_suppressed` line per key and
    interval tells how many there were. `flush()` (called on any thread's loop) writes the pending counts."""

    def __init__(self, log: Any, interval_s: float = 10.0, burst: int = 5) -> None:
        self.log, self.interval_s, self.burst = log, float(interval_s), int(burst)
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._lines: dict[tuple[str, str], int] = {}  # (event, key) -> lines in this window
        self._suppressed: dict[tuple[str, str], int] = {}

    def __call__(self, level: str, event: str, kind: str, /, **fields: Any) -> None:
        """Log `event` at `level` unless `kind` (a code, a class of peer: a few values, never the peer's own data)
        already had its `burst` lines this interval."""
        with self._lock:
            due = self._roll(time.monotonic())
            n = self._lines.get((event, kind), 0) + 1
            self._lines[(event, kind)] = n
            if n > self.burst:
                self._suppressed[(event, kind)] = self._suppressed.get((event, kind), 0) + 1
        self._write(due)
        if n <= self.burst:
            getattr(self.log, level)(event, **fields)

    def flush(self, force: bool = False) -> None:
        with self._lock:
            due = self._roll(time.monotonic(), force)
        self._write(due)

    def _roll(self, now: float, force: bool = False) -> dict[tuple[str, str], int]:
        if not force and now - self._window_start < self.interval_s:
            return {}
        due, self._suppressed, self._lines = self._suppressed, {}, {}
        self._window_start = now
        return due

    def _write(self, due: dict[tuple[str, str], int]) -> None:
        for (event, kind), count in due.items():
            self.log.warning(f"{event}_suppressed", kind=kind, count=count, interval_s=self.interval_s)
