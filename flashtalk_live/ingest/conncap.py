"""A cap on the tcp connections of one ZeroMQ socket, so an idle-connection flood cannot exhaust descriptors.

libzmq has no connection limit, and once its tcp listener has taken every descriptor the next ipc connect makes
it assert (ipc_listener.cpp: EMFILE) and the whole daemon aborts. The socket's monitor reports every accepted
connection with its descriptor; past `cap` open tcp connections a new one is shut down at once (shutdown(2), not
close: libzmq owns the descriptor and closes it when its engine sees the end). ipc connections are never capped:
they are the operator's way in, and the file's permissions guard them.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED


class ConnectionCap:
    """Watches one bound socket's monitor; `handle()` (on the socket's own thread) enforces the cap."""

    def __init__(self, sock: zmq.Socket, cap: int, name: str, log: Any,
                 on_end: Callable[[int], object] | None = None) -> None:
        self.cap = int(cap)
        self.on_end = on_end  # told the descriptor of every connection seen to end (its number may be reused)
        self.name = name
        self.log = log
        self.monitor = sock.get_monitor_socket(_EVENTS)
        self.open: set[int] = set()  # descriptors of accepted tcp connections not yet seen to end
        self.refused = 0
        self._ports: set[int] = set()
        self._refusing = False

    def watch_endpoint(self, endpoint: str) -> None:
        """A bound tcp endpoint: connections whose local port is this one are capped."""
        if endpoint.startswith("tcp://"):
            self._ports.add(int(endpoint.rsplit(":", 1)[1]))

    def handle(self) -> None:
        while True:
            try:
                ev = recv_monitor_message(self.monitor, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            fd = int(ev["value"])
            raw = ev["endpoint"]
            endpoint = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            if ev["event"] == zmq.EVENT_ACCEPTED and endpoint.startswith("tcp://"):
                if len(self.open) >= self.cap:
                    self._refuse(fd)
                else:
                    self.open.add(fd)
            elif ev["event"] in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                self.open.discard(fd)
                if self.on_end is not None:
                    self.on_end(fd)
                if self._refusing and len(self.open) < self.cap // 2:
                    self._refusing = False
                    self.log.warning("connections_accepted_again", socket=self.name, open=len(self.open),
                                     refused=self.refused)

    def _refuse(self, fd: int) -> None:
        try:
            s = socket.socket(fileno=fd)  # wraps the descriptor; detach() below, so it is never closed here
        except OSError:
            return  # already closed by libzmq
        try:
            # The descriptor may have been closed and reused since the event was queued: only a tcp socket on one
            # of our ports is ours to end.
            if s.family in (socket.AF_INET, socket.AF_INET6) and s.getsockname()[1] in self._ports:
                s.shutdown(socket.SHUT_RDWR)
                self.refused += 1
                if not self._refusing:
                    self._refusing = True
                    self.log.error("connections_capped", socket=self.name, cap=self.cap,
                                   hint="new tcp connections are closed until the open ones end "
                                        "(ingest.max_connections)")
        except OSError:
            pass
        finally:
            s.detach()

    def status(self) -> dict[str, int]:
        return {"open": len(self.open), "cap": self.cap, "refused": self.refused}

    def close(self) -> None:
        self.monitor.close(0)
