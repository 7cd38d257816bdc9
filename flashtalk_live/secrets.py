"""The one secret masker: stream keys, credentials and query tokens hidden in URLs and in any text or data.

Rules (the same for logs, replies, events, status, metrics, tracebacks, `config show` and error messages):
- any scheme, in any case, with one to three slashes (``RTMP://``, ``rtmpx://``, ``rtmp:/``, ``rmtp://``) counts;
- ``user:password@`` becomes ``***@``; a query or fragment becomes ``?****``;
- the path keeps its first segment (the RTMP app) and hides the rest: ``rtmp://host/app/****``; a path of one
  segment (``rtmp://host/KEY``) is hidden whole;
- local transports (file, ipc, tcp, inproc) keep their path: it names a local socket or file, not a secret.
Masking is idempotent: a masked URL masks to itself.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "****"
# Schemes whose path is a local file or socket name, never a key (credentials and queries are still hidden).
LOCAL_SCHEMES = frozenset({"file", "ipc", "tcp", "inproc"})

# A scheme-like word, ':' and 1-3 slashes, then everything up to whitespace, a quote, a bracket or a backslash.
_URL = re.compile(
    r"(?<![A-Za-z0-9+.\-])(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]{0,31}):(?P<slashes>/{1,3})(?P<rest>[^\s'\"<>\\`|]*)"
)
_TRAILING = re.compile(r"[.,;:!)\]}]+$")  # sentence punctuation after a URL, kept outside the mask


def _mask_rest(scheme: str, rest: str, local: bool) -> str:
    """Mask what follows 'scheme://'."""
    out = ""
    if "@" in rest:  # user:password@host; an '@' further on only hides more, never less
        rest = rest[rest.rfind("@") + 1:]
        out = "***@"
    tail = ""
    cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
    if cut >= 0:
        rest, tail = rest[:cut], rest[cut] + MASK
    if local:
        return out + rest + tail
    host, slash, path = rest.partition("/")
    if slash and path:
        app, more, _key = path.partition("/")
        path = f"{app}/{MASK}" if more else MASK
    return out + host + slash + path + tail


def _mask_match(m: re.Match[str]) -> str:
    scheme, slashes, rest = m.group("scheme"), m.group("slashes"), m.group("rest")
    trail = _TRAILING.search(rest)
    end = trail.group(0) if trail else ""
    if end:
        rest = rest[: -len(end)]
    local = scheme.lower() in LOCAL_SCHEMES
    return f"{scheme}:{slashes}{_mask_rest(scheme, rest, local)}{end}"


def mask_text(text: str) -> str:
    """Every URL-like thing inside free text (messages, tracebacks, reprs) masked; other text untouched."""
    if ":/" not in text:
        return text
    return _URL.sub(_mask_match, text)


def mask_url(url: str, *, strict: bool = False) -> str:
    """One URL masked. `strict` (for a value rejected as an output URL, whatever it looks like): a value without a
    scheme also loses everything after its first '/' and any query, since it may be a URL that lost its scheme."""
    if strict and re.search(r"\s", url.strip()):
        # A URL ends at white space in free text, so whatever follows it would show as it is: a key pasted after a
        # stray space ('rtmp://h/live KEY'). A rejected value is one token, masked up to its first space, the rest hidden.
        return mask_url(re.split(r"\s", url.strip(), maxsplit=1)[0], strict=True) + " " + MASK
    masked = mask_text(url)
    local_path = url.startswith(("/", "./", "../", "~")) and not url.startswith("//")
    if strict and not local_path and not _URL.match(url):
        head, slash, rest = masked.partition("/")
        head = head.split("?", 1)[0]
        masked = head + (slash + MASK if rest or slash else "")
        if "@" in masked:
            masked = "***@" + masked[masked.rfind("@") + 1:]
    return masked


def mask_obj(obj: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, tuples, strings) with every string masked; other values as they are."""
    if isinstance(obj, str):
        return mask_text(obj)
    if isinstance(obj, dict):
        return {k: mask_obj(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask_obj(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(mask_obj(v) for v in obj)
    return obj


def carries_secret(text: str) -> bool:
    """True when masking would change `text` (it holds a key, a credential or a query)."""
    return mask_text(text) != text
