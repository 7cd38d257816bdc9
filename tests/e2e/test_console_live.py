"""The console's live parts on a real in-process daemon: moving a pending clip over HTTP (with the table's refusals),
the event stream (server-sent events: backlog, live events, resuming, a cap on streams, a slow client dropped without
blocking the publisher) and the health history (/api/health, bounded, GPU memory omitted without CUDA)."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading

import pytest

from flashtalk_live.console.feed import EventFeed
from flashtalk_live.events import EventBus

from support.console import Http, start_daemon, wav_bytes
from support.waiting import until


class Sse:
    """One /api/events/stream connection, read event by event."""

    def __init__(self, port: int, after: int | None = None, last_event_id: int | None = None) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
        self.conn.request("GET", "/api/events/stream" + (f"?after={after}" if after is not None else ""),
                          headers=headers)
        self.resp = self.conn.getresponse()

    def next(self) -> dict:
        """The next event's data (comments and the retry hint skipped)."""
        data, ident = None, None
        while True:
            line = self.resp.fp.readline().decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if line.startswith("data: "):
                data = json.loads(line[6:])
            elif line.startswith("id: "):
                ident = int(line[4:])
            elif line == "" and data is not None:
                assert ident == data["seq"]
                return data

    def until(self, pred, limit: int = 500) -> dict:
        for _ in range(limit):
            e = self.next()
            if pred(e):
                return e
        raise AssertionError("event not seen")

    def close(self) -> None:
        self.resp.close()  # the response holds the socket open too
        self.conn.close()


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(tmp_path, "console.event_stream_clients=2", "console.health_interval_s=0.2",
                     "console.health_history_s=1.0")
    until(lambda: d.state == "on_air", what="on air")
    yield d
    d.close()


@pytest.mark.timeout(120)
def test_move_a_pending_clip_over_http(daemon):
    http = Http(daemon.metrics_port, token=daemon.console_token)
    status, on_air = http.command("enqueue", None, wav_bytes(20.0))  # long: the others stay pending meanwhile
    assert status == 200
    # on air, not only rendered ahead: a buffered clip counts as pending for every edit (docs/protocol.md)
    until(lambda: daemon.status()["on_air"] == on_air["segment_id"], 30, "on air")
    ids = [http.command("enqueue", None, wav_bytes(1.0, freq=300.0 + 100 * i))[1]["segment_id"] for i in range(3)]

    def order() -> list[str]:
        return [p["segment_id"] for p in http.get_json("/api/queue")["pending"]]

    assert order() == ids
    for fields, want, code, field in [
        ({"segment_id": on_air["segment_id"], "to": 0}, 409, "not_pending", "segment_id"),
        ({"segment_id": ids[0], "after": on_air["segment_id"]}, 409, "not_pending", "after"),
        ({"segment_id": "0123456789abcdef", "to": 0}, 404, "not_found", "segment_id"),
        ({"segment_id": ids[0], "before": "0123456789abcdef"}, 404, "not_found", "before"),
        ({"segment_id": ids[0], "before": ids[1], "after": ids[2]}, 400, "bad_request", "after"),
    ]:
        status, body = http.command("move", fields)
        assert (status, body.get("code"), body.get("field")) == (want, code, field), (fields, body)
    assert order() == ids
    status, body = http.command("move", {"segment_id": ids[2], "before": ids[0]})
    assert (status, body["position_was"], body["position"]) == (200, 2, 0), body
    assert order() == [ids[2], ids[0], ids[1]]
    status, body = http.command("move", {"segment_id": ids[2], "to": 99})
    assert order() == [ids[0], ids[1], ids[2]]
    moved = [e for e in http.get_json("/api/events")["events"] if e["type"] == "moved"]
    assert [(e["segment_id"], e["position_was"], e["position"]) for e in moved] == [(ids[2], 2, 0), (ids[2], 0, 2)]
    status, _ = http.command("move", {"segment_id": ids[0], "to": 1}, token=None)
    assert status == 401 and order() == [ids[0], ids[1], ids[2]]


@pytest.mark.timeout(120)
def test_event_stream_backlog_live_resume_and_cap(daemon):
    http = Http(daemon.metrics_port, token=daemon.console_token)
    a = Sse(daemon.metrics_port)
    assert a.resp.status == 200 and a.resp.headers["Content-Type"].startswith("text/event-stream")
    first = a.next()  # the backlog starts with the oldest event the ring holds
    assert first["seq"] == http.get_json("/api/events")["events"][0]["seq"]
    status, ack = http.command("enqueue", None, wav_bytes(1.0))
    assert status == 200
    seen = a.until(lambda e: e["type"] == "accepted" and e["segment_id"] == ack["segment_id"])
    started = a.until(lambda e: e["type"] == "started" and e["segment_id"] == ack["segment_id"])
    # A reconnect with Last-Event-ID (what a browser's EventSource sends) resumes right after it.
    b = Sse(daemon.metrics_port, last_event_id=seen["seq"])
    resumed = b.next()
    assert resumed["seq"] == seen["seq"] + 1
    assert (resumed if resumed["seq"] == started["seq"] else b.until(lambda e: e["seq"] == started["seq"])) == started
    # console.event_stream_clients=2: a third stream is refused, with the same JSON as every refusal.
    c = Sse(daemon.metrics_port)
    assert c.resp.status == 503 and json.loads(c.resp.read())["code"] == "busy"
    c.close()
    assert http.get_json("/api/status")["event_streams"]["open"] == 2
    # A client that leaves frees its place once the server's next write to it fails.
    b.close()

    def freed() -> bool:
        daemon.events.publish("idle", frame=0, media_time_s=0.0)  # something to write to the closed stream
        return daemon.console.events.open_streams < 2

    until(freed, 30, "the closed stream's place")
    d = Sse(daemon.metrics_port, after=started["seq"])
    assert d.resp.status == 200 and d.next()["seq"] > started["seq"]
    for s in (a, d):
        s.close()


@pytest.mark.timeout(60)  # a publisher that waited for the (absent) reader would hang here
def test_a_slow_stream_client_is_dropped_and_never_blocks_the_publisher():
    bus = EventBus()
    feed = EventFeed(bus, size=200, max_streams=1, queue_size=4)
    closed = threading.Event()
    body = feed.open(0, closed)
    assert body is not None and feed.open(0, closed) is None  # max_streams=1
    for i in range(1000):  # nobody reads the stream: its queue fills, then the stream is dropped
        bus.publish("idle", frame=i, media_time_s=0.0)
    chunks = list(body)  # the body ends by itself: retry hint, nothing queued, end
    assert chunks[0].startswith(b"retry:") and len(chunks) == 1 and feed.streams_lost == 1
    body.close()
    assert feed.open_streams == 0
    again = feed.open(995, closed)  # a reconnect gets what it missed from the ring
    it = iter(again)
    next(it)
    assert [json.loads(next(it).decode().split("data: ", 1)[1])["frame"] for _ in range(4)] == [995, 996, 997, 998]
    again.close()
    feed.close()


@pytest.mark.timeout(120)
def test_health_history_is_sampled_bounded_and_charts_recalibrations(daemon):
    http = Http(daemon.metrics_port)
    h = until(lambda: len((h := http.get_json("/api/health"))["samples"]) >= 5 and h, 30, "five samples")
    assert h["interval_s"] == 0.2 and h["history_s"] == 1.0 and h["fields"][0] == "t"
    col = {name: i for i, name in enumerate(h["fields"])}
    rows = h["samples"]
    assert len(rows) <= 5  # ceil(history_s / interval_s): the ring is bounded
    assert all(r[col["t"]] < s[col["t"]] for r, s in zip(rows, rows[1:]))
    assert all(isinstance(r[col["av_skew_s"]], float) and isinstance(r[col["buffered_frames"]], int) for r in rows)
    assert "gpu" not in h and rows[-1][col["gpu_allocated_bytes"]] is None  # the still renderer: no CUDA
    newer = http.get_json(f"/api/health?since={rows[-1][col['t']]}")["samples"]
    assert all(r[col["t"]] > rows[-1][col["t"]] for r in newer)
    assert http.request("GET", "/api/health?since=x", token=None)[0] == 400
    before = rows[-1][col["recalibrations"]]
    daemon.events.publish("recalibrated", chunk=1, before={}, after={})
    until(lambda: http.get_json("/api/health")["samples"][-1][col["recalibrations"]] == before + 1, 30,
               "the recalibration in the history")


def test_gpu_memory_never_imports_torch():
    code = ("import sys; from flashtalk_live.console.health import gpu_memory; "
            "assert gpu_memory() is None and 'torch' not in sys.modules; "
            "import torch; assert gpu_memory() is None or torch.cuda.is_initialized(); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_gpu_memory_is_reported_once_cuda_is_in_use():
    """Runs where CUDA is (the lead's GPU box); skipped on the CPU-only CI machine."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from flashtalk_live.console.health import gpu_memory

    x = torch.empty(64 * 2**20, dtype=torch.uint8, device="cuda")
    gpus = gpu_memory()
    assert gpus and gpus[0]["allocated_bytes"] >= x.numel() and gpus[0]["max_allocated_bytes"] >= x.numel()
    assert gpus[0]["total_bytes"] > gpus[0]["allocated_bytes"]


@pytest.mark.timeout(120)
def test_a_crowd_on_metrics_and_health_never_fails_the_probes(daemon):
    """/metrics and /api/health (no token, anyone on the machine) filling their budget must not make /livez answer
    503: a kubelet would restart a healthy room."""
    http = Http(daemon.metrics_port)
    budget = daemon.console.budgets["probe"]
    for _ in range(budget.cap):  # `cap` slow /api/health readers hold every slot
        assert budget.enter(False)
    try:
        assert http.request("GET", "/api/health", token=None)[0] == 503  # the crowd's door is full...
        for path in ("/livez", "/readyz", "/startupz"):
            status, _, body = http.request("GET", path, token=None)
            assert status == 200, (path, status, body)  # ...the probes still answer their verdict
            assert json.loads(body)["probe"] == path[1:]
    finally:
        for _ in range(budget.cap):
            budget.leave()


@pytest.mark.timeout(120)
def test_an_upload_cut_short_by_the_read_deadline_is_never_queued(tmp_path):
    """A body that stops before its Content-Length (the client stalled, the read deadline closed the connection) is
    not a command: half a WAV must not be queued and aired."""
    import socket

    d = start_daemon(tmp_path, "console.read_deadline_s=0.5")
    try:
        until(lambda: d.state == "on_air", what="on air")
        wav = wav_bytes(2.0)
        s = socket.create_connection(("127.0.0.1", d.metrics_port))
        s.sendall((f"POST /api/commands/enqueue?args=%7B%22id%22%3A%22cut%22%7D HTTP/1.1\r\nHost: localhost\r\n"
                   f"Authorization: Bearer {d.console_token}\r\nContent-Type: audio/wav\r\n"
                   f"Content-Length: {len(wav)}\r\n\r\n").encode() + wav[:len(wav) // 2])
        while s.recv(65536):  # the server ends the connection at the deadline
            pass
        s.close()
        api = d.console.budgets["api"]
        until(lambda: api.busy == 0, what="the request answered")
        http = Http(d.metrics_port)
        assert not [e for e in http.get_json("/api/events")["events"] if e["type"] == "accepted"]
    finally:
        d.close()


@pytest.mark.timeout(120)
def test_a_bind_to_another_loopback_address_answers_its_own_url(tmp_path):
    """metrics.host = 127.0.0.2 is a loopback bind (the Host check is on); the page at the address the log names
    (http://127.0.0.2:PORT/) is this machine, not a rebinding name, and must be served."""
    from flashtalk_live.console import console_url

    d = start_daemon(tmp_path, 'metrics.host="127.0.0.2"')
    try:
        assert d.console.check_host
        url = console_url("127.0.0.2", d.metrics_port)
        http = Http(d.metrics_port)
        http.base = url.rstrip("/")
        status, _, body = http.request("GET", "/api/status", token=None)
        assert status == 200, (status, body[:200])
        status, _, body = http.request("GET", "/api/status", token=None, headers={"Host": "evil.example:80"})
        assert (status, json.loads(body)["code"]) == (403, "forbidden_host")
    finally:
        d.close()


@pytest.mark.timeout(120)
def test_a_chunked_command_body_is_refused_never_run_without_its_fields(daemon):
    """Transfer-Encoding: chunked carries no Content-Length: the body must not be taken as empty, or
    `skip {"segment_id": X}` (skip only X) would run as a bare `skip` and cut whatever is on air."""
    api = Http(daemon.metrics_port, token=daemon.console_token)
    status, ack = api.command("enqueue", None, wav_bytes(20.0))
    assert status == 200, ack
    until(lambda: api.get_json("/api/status")["on_air"] == ack["segment_id"], what="the clip on air")
    conn = http.client.HTTPConnection("127.0.0.1", daemon.metrics_port, timeout=30)
    try:
        conn.request("POST", "/api/commands/skip", body=iter([b'{"segment_id": ', b'"not-this-one"}']),
                     headers={"Authorization": f"Bearer {daemon.console_token}",
                              "Content-Type": "application/json"}, encode_chunked=True)
        r = conn.getresponse()
        body = json.loads(r.read())
    finally:
        conn.close()
    assert (r.status, body["ok"]) == (411, False), (r.status, body)
    assert not [e for e in Http(daemon.metrics_port).get_json("/api/events")["events"] if e["type"] == "skipped"]
