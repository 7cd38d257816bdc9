"""Child process of one RTMP output: remux the FLV arriving on stdin to the URL in $FLASHTALK_OUTPUT_URL.

One process = one connection attempt. It does all the network I/O, so a peer that never answers
(PyAV holds the GIL in the RTMP handshake and in close()) freezes only this process, which the parent
SIGKILLs. It reports on stdout, one JSON object per line: started, reachable, input, up, progress, error, eof.
It imports only the standard library and PyAV, so it starts fast, and it dies with its parent.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import time
from urllib.parse import urlsplit

PROGRESS_EVERY_S = 0.25


def _say(**msg: object) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def _die_with_parent() -> None:
    try:  # PR_SET_PDEATHSIG = 1: SIGKILL this process when the parent (thread) dies
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass
    if os.getppid() == 1:  # parent already gone before prctl took effect
        os._exit(3)


def _preflight(url: str, timeout: float) -> None:
    parts = urlsplit(url)
    default = 443 if parts.scheme.lower() == "rtmps" else 1935
    if not parts.hostname:
        raise OSError(f"no host in the output URL (scheme {parts.scheme!r})")
    socket.create_connection((parts.hostname, parts.port or default), timeout=timeout).close()


def main() -> int:
    _die_with_parent()
    url = os.environ.get("FLASHTALK_OUTPUT_URL")
    if not url:
        _say(ev="error", error="FLASHTALK_OUTPUT_URL is not set")
        return 2
    _say(ev="started")
    # Cheap pre-flight before the parent starts the stream (and forces a keyframe on the shared encoder):
    # a refused or unroutable endpoint fails here, in one TCP connect, without costing anyone an IDR.
    try:
        _preflight(url, float(os.environ.get("FLASHTALK_OUTPUT_CONNECT_TIMEOUT", "2")))
    except OSError as e:
        _say(ev="error", error=f"{type(e).__name__}: {e}")
        return 1
    _say(ev="reachable")
    import av  # the slow part of starting; overlaps with the parent's wait for a keyframe

    inp = out = None
    try:
        # pipe:0 reads stdin in FFmpeg without the GIL and returns partial reads (no buffering latency).
        inp = av.open("pipe:0", "r", format="flv", options={"analyzeduration": "200000", "probesize": "65536"})
        _say(ev="input", streams=[s.type for s in inp.streams])
        out = av.open(url, "w", format="flv")
        mapping = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        out.start_encoding()  # TCP connect + RTMP handshake + publish: may hang; the parent's deadline covers it
        _say(ev="up")
        sent_bytes = sent_packets = 0
        last_report = time.monotonic()
        media_s = 0.0
        for p in inp.demux():
            if p.dts is None or p.stream.index not in mapping:
                continue  # demuxer's flush packet at EOF
            size = p.size
            if p.time_base is not None:
                media_s = float(p.dts * p.time_base)
            p.stream = mapping[p.stream.index]
            out.mux(p)
            sent_bytes += size
            sent_packets += 1
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                _say(ev="progress", bytes=sent_bytes, packets=sent_packets, media_s=round(media_s, 3))
                last_report = now
        _say(ev="progress", bytes=sent_bytes, packets=sent_packets, media_s=round(media_s, 3))
        out.close()
        out = None
        _say(ev="eof")
        return 0
    except Exception as e:  # noqa: BLE001 - reported to the parent, which decides what to do
        _say(ev="error", error=f"{type(e).__name__}: {e}")
        return 1
    finally:
        for c in (out, inp):
            if c is not None:
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # parent's stdout reader gone: just end
    sys.exit(main())
