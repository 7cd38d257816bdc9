"""The test harness's free ports stay out of the range outgoing connections draw from (CI failed on that)."""

from __future__ import annotations

import socket

from support.box_faults import idle_connections
from support.ports import ephemeral_range, free_port


def test_free_ports_are_drawn_below_the_ephemeral_range_and_survive_a_connection_flood():
    lo, _ = ephemeral_range()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(2048)
        flood = idle_connections(server.getsockname()[1], 500)  # 500 local ports taken from the ephemeral range
        try:
            taken = {s.getsockname()[1] for s in flood}
            ports = [free_port() for _ in range(200)]
        finally:
            for s in flood:
                s.close()
    assert not taken & set(ports)
    assert all(10000 <= p < lo for p in ports), (lo, sorted(ports)[:5], sorted(ports)[-5:])
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))  # still free
