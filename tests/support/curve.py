"""CURVE peers the daemon does not know: sockets with fresh key pairs aimed at a room's server key (the refused-
handshake flood of the bounded-input test and the log-volume benchmark)."""

from __future__ import annotations

from pathlib import Path

import zmq
import zmq.auth


def unknown_peers(ctx: zmq.Context, state_dir: Path, n: int) -> list[zmq.Socket]:
    """`n` DEALER sockets, each with its own unknown key pair, set to the server key under `state_dir/keys`."""
    server_public, _ = zmq.auth.load_certificate(str(state_dir / "keys" / "server.key"))
    socks = []
    for _ in range(n):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.curve_serverkey = server_public
        s.curve_publickey, s.curve_secretkey = zmq.curve_keypair()
        socks.append(s)
    return socks
