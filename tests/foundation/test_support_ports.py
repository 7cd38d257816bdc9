"""The test harness's free ports stay out of the range outgoing connections draw their local ports from: a port
taken there by another worker's connection flood before the daemon bound it failed CI three starts in a row."""

from __future__ import annotations

import socket

from support.ports import ephemeral_range, free_port


def test_free_ports_are_drawn_below_the_ephemeral_range_and_are_free():
    lo, _ = ephemeral_range()
    ports = [free_port() for _ in range(200)]
    assert all(10000 <= p < lo for p in ports), (lo, sorted(ports)[:5], sorted(ports)[-5:])
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))
