"""Descriptor floods on the front door and the metrics endpoint: caps hold, the operator still gets in."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from flashtalk_live.client import Client
from flashtalk_live.metrics import serve_metrics

from support.box_faults import idle_connections, scrape
from support.waiting import until


def ended(s: socket.socket) -> bool:
    s.setblocking(True)
    s.settimeout(0.2)
    try:
        while s.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except (TimeoutError, socket.timeout, BlockingIOError):
        return False


def test_tcp_connections_over_the_cap_are_closed_and_ipc_still_answers(running):
    r = running("ingest.max_connections=5", "ingest.handshake_timeout_s=60")
    port = int(r.tcp.rsplit(":", 1)[1])
    socks = idle_connections(port, 40)
    try:
        conns = until(lambda: (c := r.server.status()["ingest"]["connections"]["control"])["refused"] >= 20 and c)
        assert conns["cap"] == 5 and conns["open"] <= 5
        with Client(r.ipc, timeout_s=5) as c:
            assert c.ping()["pong"]
        # the refused ones were really ended: their peers read EOF (or a reset) after libzmq's greeting
        assert sum(map(ended, socks)) >= 20
    finally:
        for s in socks:
            s.close()
    # once the flood is gone, tcp clients get in again
    until(lambda: r.server.status()["ingest"]["connections"]["control"]["open"] == 0)
    with Client(r.tcp, timeout_s=5) as c:
        assert c.ping()["pong"]


def test_metrics_server_caps_connections_and_drops_idle_ones():
    server, _ = serve_metrics("127.0.0.1", 0, lambda: {"state": "on_air"}, max_connections=3, timeout_s=0.5)
    port = server.server_port
    try:
        socks = idle_connections(port, 50)
        until(lambda: server.refused >= 40)
        assert server.max_connections == 3
        # idle clients are dropped after timeout_s, and a real scrape is served again
        body = until(lambda: scrape(port))
        assert 'flashtalk_state{state="on_air"} 1.0' in body
        for s in socks:
            s.close()
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_server_drops_a_client_trickling_its_headers():
    """A slowloris sending one header byte well within timeout_s each time must still lose its connection (console
    off: this server answers the probes): else `max_connections` of them hold every slot and /livez is refused."""
    import threading

    server, _ = serve_metrics("127.0.0.1", 0, lambda: {"state": "on_air"}, max_connections=2, timeout_s=1.0)
    port = server.server_port
    stop, dropped = threading.Event(), [0]

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", port)) as s:
            try:
                for b in b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 10_000:
                    s.sendall(bytes([b]))
                    if stop.wait(0.1):
                        return
            except OSError:
                dropped[0] += 1

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        until(lambda: dropped[0] == 2, timeout_s=30, what="both trickling connections dropped")
        assert 'flashtalk_state{state="on_air"} 1.0' in until(lambda: scrape(port))
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def test_heartbeats_drop_a_peer_that_stopped_answering(running):
    """A producer frozen mid-connection (SIGSTOP: its TCP stays up, its ZeroMQ stops) is dropped by heartbeats."""
    r = running("ingest.heartbeat_s=0.5", "ingest.heartbeat_timeout_s=2")
    peer = subprocess.Popen([sys.executable, "-c", PEER.format(endpoint=r.tcp)], stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout.readline().strip() == "connected"  # it made a real request over the connection
        until(lambda: r.server.status()["ingest"]["connections"]["control"]["open"] == 1)
        os.kill(peer.pid, signal.SIGSTOP)
        until(lambda: r.server.status()["ingest"]["connections"]["control"]["open"] == 0, timeout_s=60)
    finally:
        os.kill(peer.pid, signal.SIGKILL)
        peer.wait(10)


PEER = """
import time, zmq
s = zmq.Context().socket(zmq.DEALER)
s.connect("{endpoint}")
s.send_multipart([b"", b'{{"v": 1, "cmd": "ping"}}'])
s.recv_multipart()
print("connected", flush=True)
time.sleep(600)
"""
