"""The registry of output kinds: which URLs each kind takes, how it checks and normalises them, what class runs it.

One table, read at config load (settings), at `output_add` (the daemon) and by the output manager, so the same
rules apply everywhere. Adding an output kind is one `OutputKind` entry in `KINDS` plus its Output class.
Every error message shows the URL masked. This module imports only the standard library and the masker, so the
settings can use it without importing PyAV.
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from flashtalk_live.secrets import mask_url

FILE_FORMATS = {".flv": "flv", ".mp4": "mp4"}
# 'scheme:' + any slashes, at the very start: what makes a value a URL rather than a path.
_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]{1,31}):(?P<slashes>/*)")


class OutputURLError(ValueError):
    """An output URL no kind accepts, or one its kind finds malformed; the message shows it masked."""

    code = "bad_request"
    field = "url"


def split_scheme(url: str) -> tuple[str | None, str, str]:
    """(lower-case scheme or None, the slashes after ':', the rest)."""
    m = _SCHEME.match(url)
    if m is None:
        return None, "", url
    return m.group("scheme").lower(), m.group("slashes"), url[m.end():]


def _fail(url: str, problem: str, expected: str) -> OutputURLError:
    return OutputURLError(f"output url {mask_url(url, strict=True)!r}: {problem}; expected {expected}")


@dataclass(frozen=True)
class OutputKind:
    """One kind of output: `accepts` claims a URL (by its scheme), `check` normalises it or raises OutputURLError."""

    name: str
    schemes: frozenset[str]  # '' stands for a plain path (no scheme)
    example: str  # what is expected, for error messages
    check: Callable[[str], str]
    output_class: str  # "module:Class", imported when the first output of this kind starts (it needs PyAV)

    def accepts(self, url: str) -> bool:
        scheme, _, _ = split_scheme(url)
        return (scheme or "") in self.schemes

    def validate(self, url: str) -> str:
        """The URL normalised (scheme in lower case); OutputURLError if it is malformed for this kind."""
        return self.check(url)

    def load(self) -> type[Any]:
        module, _, name = self.output_class.partition(":")
        return getattr(importlib.import_module(module), name)


# -- rtmp / rtmps --------------------------------------------------------------------------------------
RTMP_EXAMPLE = "rtmp:// or rtmps:// followed by host[:port]/app/key"  # no URL in it: the masker would mask it


def _check_rtmp(url: str) -> str:
    scheme, slashes, rest = split_scheme(url)
    assert scheme is not None
    if slashes != "//":
        raise _fail(url, f"{scheme}:{slashes} needs exactly two slashes", RTMP_EXAMPLE)
    normal = f"{scheme}://{rest}"
    if any(c.isspace() for c in normal):
        raise _fail(url, "contains white space", RTMP_EXAMPLE)
    try:
        parts = urlsplit(normal)
        parts.port  # noqa: B018 - raises ValueError on a non-numeric or out-of-range port
    except ValueError:  # urllib's message may quote the port text: not shown
        raise _fail(url, "bad host or port", RTMP_EXAMPLE) from None
    if not parts.hostname:
        raise _fail(url, "no host", RTMP_EXAMPLE)
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) < 2 and not parts.query:
        raise _fail(url, "no app and stream key after the host", RTMP_EXAMPLE)
    return normal


# -- local files -------------------------------------------------------------------------------------------
FILE_EXAMPLE = "a .flv or .mp4 file path (file:// allowed; %Y etc. and {n} expand)"


def file_path(url: str) -> str:
    """The path part of a file output URL ('file://x', 'file:x' or a plain path)."""
    scheme, slashes, rest = split_scheme(url)
    if scheme != "file":
        return url
    return "/" + rest if slashes in ("/", "///") else rest  # file://x is relative, file:///x and file:/x absolute


def _check_file(url: str) -> str:
    scheme, slashes, rest = split_scheme(url)
    path = file_path(url)
    want = FILE_EXAMPLE if scheme else expected()  # a bare word may have been meant as any kind
    if not path.strip():
        raise _fail(url, "empty path", want)
    suffix = Path(path).suffix.lower()
    if suffix not in FILE_FORMATS:
        raise _fail(url, f"unsupported file type {suffix or '(none)'!r}", want)
    return f"file:{slashes}{rest}" if scheme == "file" else url


KINDS: tuple[OutputKind, ...] = (
    OutputKind("rtmp", frozenset({"rtmp", "rtmps"}), RTMP_EXAMPLE, _check_rtmp, "flashtalk_live.outputs.rtmp:RtmpOutput"),
    OutputKind("file", frozenset({"", "file"}), FILE_EXAMPLE, _check_file, "flashtalk_live.outputs.files:FileOutput"),
)


def expected() -> str:
    return "; or ".join(k.example for k in KINDS)


def kind_for(url: str) -> OutputKind:
    """The kind that accepts `url`; OutputURLError naming the (masked) URL and every accepted form otherwise."""
    if not isinstance(url, str) or not url:
        raise OutputURLError(f"output url is empty; expected {expected()}")
    for kind in KINDS:
        if kind.accepts(url):
            return kind
    scheme, _, _ = split_scheme(url)
    known = sorted(s for k in KINDS for s in k.schemes if s)
    close = difflib.get_close_matches(scheme or "", known, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise _fail(url, f"unknown scheme {scheme!r}{hint}", expected())


def validate_url(url: str) -> str:
    """Normalise an output URL by the rules of its kind; OutputURLError (masked) when no kind takes it."""
    return kind_for(url).validate(url)


def kind_name(url: str) -> str:
    return kind_for(url).name
