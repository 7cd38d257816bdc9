"""Prometheus text endpoint: a collector that turns the daemon's status dict into metrics at scrape time.

The HTTP server is reachable by any local user, so it holds few descriptors whatever comes at it: at most
`max_connections` connections are served at once (one thread each), more are closed as soon as they are accepted,
an idle or slow client is dropped after `timeout_s`, and a full descriptor table only pauses accepting.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from socketserver import TCPServer, ThreadingMixIn
from typing import Any, Callable
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import MetricsHandler
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from flashtalk_live.probes import RoomProbes
from flashtalk_live.secrets import mask_obj

STATES = ("starting", "on_air", "stopping")
ENDPOINT_STATES = ("up", "connecting", "down")


class StatusCollector:
    """Reads `status_provider()` on every scrape, so metrics and the `status` reply can never disagree."""

    def __init__(self, status_provider: Callable[[], dict[str, Any]]) -> None:
        self._status = status_provider

    def collect(self):  # noqa: ANN201 - prometheus_client protocol
        s = mask_obj(self._status())  # label values (output and renderer names) never carry a key
        state = GaugeMetricFamily("flashtalk_state", "Daemon state (1 for the current one)", labels=["state"])
        for name in STATES:
            state.add_metric([name], 1.0 if s.get("state") == name else 0.0)
        yield state
        b = s.get("broadcast", {})
        q = s.get("queue", {})
        yield GaugeMetricFamily("flashtalk_queue_clips", "Clips waiting in the queue", value=q.get("clips", 0))
        yield GaugeMetricFamily("flashtalk_queue_seconds", "Audio waiting in the queue, seconds", value=q.get("queued_seconds", 0.0))
        yield GaugeMetricFamily("flashtalk_spool_bytes", "Bytes in the spool", value=q.get("spool_bytes", 0))
        yield GaugeMetricFamily("flashtalk_av_skew_seconds", "Encoded audio end minus video end", value=b.get("av_skew_s", 0.0))
        yield GaugeMetricFamily("flashtalk_render_rtf", "Render time / chunk duration (below 1 keeps up)", value=b.get("render_rtf", 0.0))
        yield GaugeMetricFamily("flashtalk_lookahead_frames", "Frames rendered ahead of the encoder", value=b.get("buffered_frames", 0))
        yield from _render_ahead_metrics(s.get("render_ahead") or {})
        yield CounterMetricFamily("flashtalk_frames", "Frames broadcast", value=b.get("frames_out", 0))
        under = CounterMetricFamily("flashtalk_underrun_frames", "Frames repeated because the renderer was late, "
                                    "while a clip was on air (clip: speech stalled) or not (idle)", labels=["where"])
        for where in ("clip", "idle"):
            under.add_metric([where], float(b.get(f"underrun_frames_{where}", 0)))
        yield under
        yield CounterMetricFamily("flashtalk_underruns", "Underrun episodes", value=b.get("underrun_episodes", 0))
        yield CounterMetricFamily("flashtalk_producer_starved_seconds", "Pauses inside streamed clips that aired "
                                  "because their producer was behind real time (not underruns: the renderer kept up)",
                                  value=b.get("producer_starved_seconds", 0.0))
        st = s.get("streams") or {}
        yield GaugeMetricFamily("flashtalk_open_streams", "Streamed clips open (clip_open without close yet)",
                                value=st.get("open", 0))
        # always exported (no series before the first clip airs): the fleet dashboard names it
        p2a = (s.get("latency") or {}).get("push_to_air") or {}
        h = HistogramMetricFamily("flashtalk_push_to_air_seconds", "Acknowledged (a stream: its first audio) to "
                                  "the clip's first frame on air, by kind", labels=["kind"])
        for kind, k in p2a.items():
            h.add_metric([kind], [(str(float(le)), float(c)) for le, c in k["buckets"]] +
                         [("+Inf", float(k["count"]))], sum_value=float(k["sum_s"]))
        yield h
        ib = (s.get("render_ahead") or {}).get("idle_bank") or {}
        yield GaugeMetricFamily("flashtalk_idle_bank_chunks", "Idle bank chunks ready for the current avatar",
                                value=ib.get("chunks_ready", 0))
        yield CounterMetricFamily("flashtalk_idle_bank_served_chunks", "Idle chunks aired from the idle bank",
                                  value=ib.get("served_chunks", 0))
        yield GaugeMetricFamily("flashtalk_process_rss_bytes", "Resident memory of the daemon", value=s.get("rss_bytes", 0))
        yield from _storage_metrics(s.get("storage") or {})
        conns = GaugeMetricFamily("flashtalk_ingest_connections", "Open tcp connections", labels=["socket"])
        refused = CounterMetricFamily("flashtalk_ingest_connections_refused",
                                      "tcp connections closed at once: over ingest.max_connections", labels=["socket"])
        for name, c in ((s.get("ingest") or {}).get("connections") or {}).items():
            conns.add_metric([name], float(c.get("open", 0)))
            refused.add_metric([name], float(c.get("refused", 0)))
        yield from (conns, refused)
        r = s.get("renderer", {})
        rend = GaugeMetricFamily("flashtalk_renderer_active", "Renderer on duty, rendering the look-ahead (1 for it; "
                                 "viewers see it seconds later: flashtalk_renderer_on_air)", labels=["renderer"])
        if r.get("active"):
            rend.add_metric([r["active"]], 1.0)
        yield rend
        aired = GaugeMetricFamily("flashtalk_renderer_on_air", "Renderer whose frames are on air (1 for it)",
                                  labels=["renderer"])
        if r.get("on_air"):
            aired.add_metric([r["on_air"]], 1.0)
        yield aired
        yield GaugeMetricFamily("flashtalk_renderer_on_fallback", "1 while the still renderer airs instead of the "
                                "configured one (loading or failed)", value=1.0 if r.get("on_fallback") else 0.0)
        yield from _gpu_metrics(s.get("gpu") or [])
        drift = r.get("drift") or {}
        for key in ("identity", "colour"):
            if key in drift:
                yield GaugeMetricFamily(f"flashtalk_drift_{key}", f"Avatar drift measure: {key}", value=drift[key])
        yield from _model_metrics(drift)
        est = GaugeMetricFamily("flashtalk_endpoint_up", "Endpoint state (1 for the current one)", labels=["output", "state"])
        bps = GaugeMetricFamily("flashtalk_endpoint_bitrate_bps", "Bits per second sent", labels=["output"])
        rec = CounterMetricFamily("flashtalk_endpoint_reconnects", "Reconnects", labels=["output"])
        drop = CounterMetricFamily("flashtalk_endpoint_dropped_packets", "Packets dropped while down", labels=["output"])
        for o in s.get("outputs", []):
            for st in ENDPOINT_STATES:
                est.add_metric([o["name"], st], 1.0 if o.get("state") == st else 0.0)
            bps.add_metric([o["name"]], float(o.get("bitrate_bps", 0)))
            rec.add_metric([o["name"]], float(o.get("reconnects", 0)))
            drop.add_metric([o["name"]], float(o.get("dropped_packets", 0)))
        yield from (est, bps, rec, drop)


def _model_metrics(d: dict[str, Any]):  # noqa: ANN202 - a generator of metric families
    """The model renderer's profile, auto's measurements, its chunk times and GPU memory (load vs steady peak)."""
    if d.get("profile"):
        auto = d.get("auto") or {}
        prof = GaugeMetricFamily("flashtalk_model_profile", "Generation profile the model runs (1), how it was "
                                 "chosen and whether it keeps real time", labels=["profile", "chosen_by", "fits"])
        fits = auto.get("fits")
        prof.add_metric([d["profile"], "auto" if auto else "setting", "" if fits is None else str(fits).lower()], 1.0)
        yield prof
    auto = d.get("auto") or {}
    if auto:
        meas = GaugeMetricFamily("flashtalk_auto_chunk_seconds", 'model.profile = "auto": measured chunk seconds '
                                 "per candidate at start-up (stage eager: the uncompiled trial)",
                                 labels=["profile", "stage", "stat"])
        for stage, rows in (("compiled", auto.get("measured") or []), ("eager", auto.get("eager") or [])):
            if stage == "compiled" and not auto.get("eager"):
                stage = "measured"  # a room without compile measures each candidate as it runs
            for t in rows:
                for stat in ("median", "p90", "limit"):
                    if t.get(f"{stat}_s") is not None:
                        meas.add_metric([t["profile"], stage, stat], float(t[f"{stat}_s"]))
        yield meas
        if auto.get("compiled_ratio") is not None:
            yield GaugeMetricFamily("flashtalk_auto_compiled_ratio", "Compiled / eager chunk time auto chose with",
                                    value=float(auto["compiled_ratio"]))
        if auto.get("remembered") is not None:
            yield GaugeMetricFamily("flashtalk_auto_remembered", "1 when auto's search started from its record in "
                                    "the compile cache (remembered eager timings: no eager trial unless the "
                                    "remembered choice missed), else 0",
                                    value=1.0 if auto["remembered"] else 0.0)
        if auto.get("remembered_age_s") is not None:
            yield GaugeMetricFamily("flashtalk_auto_remembered_age_seconds", "Age of auto's remembered measurements "
                                    "when the room started", value=float(auto["remembered_age_s"]))
    chunk = d.get("chunk_s") or {}
    if chunk.get("count"):
        fam = GaugeMetricFamily("flashtalk_model_chunk_seconds", "Model render() seconds per chunk since start",
                                labels=["stat"])
        for stat in ("p50", "p99", "max"):
            if chunk.get(stat) is not None:
                fam.add_metric([stat], float(chunk[stat]))
        yield fam
    for key, what in (("gpu_load_peak_bytes", "load (weights, quantisation, compile, warm-up)"),
                      ("gpu_steady_peak_bytes", "steady state (since the last warm-up)")):
        if d.get(key) is not None:
            yield GaugeMetricFamily(f"flashtalk_{key}", f"GPU memory peak of the torch allocator: {what}",
                                    value=float(d[key]))


def metrics_registry(status_provider: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry holding only the status collector (the console mounts it with make_wsgi_app)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status_provider))
    return registry


class ConnectionCap(ThreadingMixIn, TCPServer):
    """Mixin for a threading socketserver: at most `max_connections` served at once (the rest are closed when
    accepted), and an accept that survives EMFILE. Both HTTP servers (metrics, console) list it first; its bases
    name the methods it extends and come after the server's own classes in the method order."""

    max_connections = 16
    log: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.refused = 0
        self.accept_errors = 0

    def serve_forever(self, poll_interval: float = 0.05) -> None:
        # shutdown() waits for the loop's next poll: socketserver's 0.5 s default was a quarter of the daemon's stop
        # time (issue 21); 20 empty polls a second cost nothing measurable.
        super().serve_forever(poll_interval)

    def get_request(self):  # noqa: ANN201
        try:
            return super().get_request()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                # The pending connection stays in the backlog; retrying at once would spin the CPU.
                self.accept_errors += 1
                if self.log is not None and self.accept_errors == 1:
                    self.log.error("http_accept_failed", error=str(e))
                time.sleep(0.1)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class CappedHTTPServer(ConnectionCap, ThreadingHTTPServer):
    """The metrics endpoint's server."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, addr: tuple[str, int], handler: Any, max_connections: int, log: Any = None) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.max_connections, self.log = max_connections, log
        super().__init__(addr, handler)


def _render_ahead_metrics(ra: dict[str, Any]):
    """The render-ahead buffer (issue 10): seconds buffered, bytes in RAM and on disk, spills."""
    yield GaugeMetricFamily("flashtalk_render_ahead_seconds", "Air rendered ahead and buffered, seconds",
                            value=ra.get("buffered_s", 0.0))
    held = GaugeMetricFamily("flashtalk_render_ahead_bytes", "Render-ahead frames held, bytes", labels=["where"])
    for where in ("ram", "disk"):
        held.add_metric([where], float(ra.get(f"{where}_bytes", 0)))
    yield held
    yield CounterMetricFamily("flashtalk_render_ahead_spilled_chunks", "Render-ahead chunks spilled to disk",
                              value=ra.get("spilled_chunks_total", 0))
    yield CounterMetricFamily("flashtalk_render_ahead_spill_failures", "Chunks kept in RAM over the bound because "
                              "the spill to disk failed", value=ra.get("spill_failures_total", 0))


def _gpu_metrics(gpus: list[dict[str, Any]]):
    """This process's CUDA memory per device (console/health.gpu_memory); declared with no samples without CUDA."""
    alloc = GaugeMetricFamily("flashtalk_gpu_memory_allocated_bytes", "CUDA memory allocated by this process",
                              labels=["device"])
    peak = GaugeMetricFamily("flashtalk_gpu_memory_max_allocated_bytes", "Peak CUDA memory allocated by this "
                             "process", labels=["device"])
    total = GaugeMetricFamily("flashtalk_gpu_memory_total_bytes", "The device's memory", labels=["device"])
    for g in gpus:
        dev = [str(g.get("device"))]
        alloc.add_metric(dev, float(g.get("allocated_bytes", 0)))
        peak.add_metric(dev, float(g.get("max_allocated_bytes", 0)))
        total.add_metric(dev, float(g.get("total_bytes", 0)))
    yield from (alloc, peak, total)


def _storage_metrics(st: dict[str, Any]):
    """The state directory's disk and the spool's faults (issue 12): degraded state, write errors, quarantine."""
    yield GaugeMetricFamily("flashtalk_storage_degraded", "1 while the state directory's disk is under its watermark",
                            value=1.0 if st.get("degraded") else 0.0)
    yield CounterMetricFamily("flashtalk_storage_degraded_episodes", "Times the disk went under its watermark",
                              value=st.get("episodes", 0))
    if st.get("free_bytes") is not None:
        yield GaugeMetricFamily("flashtalk_storage_free_bytes", "Free bytes on the state directory's disk",
                                value=st["free_bytes"])
    yield CounterMetricFamily("flashtalk_spool_write_errors", "Spool commits that failed (retried)",
                              value=st.get("spool_write_errors", 0))
    yield GaugeMetricFamily("flashtalk_spool_unsettled_clips", "Finished clips whose removal is not committed yet",
                            value=st.get("unsettled_clips", 0))
    yield GaugeMetricFamily("flashtalk_spool_quarantined", "1 when an unreadable spool was moved aside at this start",
                            value=1.0 if st.get("spool_quarantined") else 0.0)


class _ReadDeadline:
    """Handler mixin: the request line and headers must arrive within `read_deadline_s` of the accept (the socket's
    timeout restarts with each byte, so a client trickling one byte a second would hold its slot for ever)."""

    read_deadline_s = 5.0

    def setup(self) -> None:
        super().setup()  # type: ignore[misc]
        self._deadline = threading.Timer(self.read_deadline_s, self._read_expired)
        self._deadline.daemon = True
        self._deadline.start()

    def _read_expired(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]
        except OSError:
            pass

    def parse_request(self) -> bool:
        ok = super().parse_request()  # type: ignore[misc]
        self._deadline.cancel()  # the headers are in: a GET has no body to wait for
        return ok

    def finish(self) -> None:
        self._deadline.cancel()
        super().finish()  # type: ignore[misc]


def _probe_handler(base: type, probes: RoomProbes) -> type:
    """`base` (the Prometheus handler) answering the probe paths first (console off: no console app to do it)."""

    class ProbeHandler(base):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            answer = probes.answer(urlsplit(self.path).path)
            if answer is None:
                return super().do_GET()
            status, body = answer
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

    return ProbeHandler


def serve_metrics(host: str, port: int, status_provider: Callable[[], dict[str, Any]], *,
                  max_connections: int = 16, timeout_s: float = 5.0, log: Any = None,
                  probes: RoomProbes | None = None):
    """Start the HTTP endpoint (/metrics, and the health probes when given) in a daemon thread; returns (server,
    thread). Port 0 picks a free port."""
    registry = metrics_registry(status_provider)
    base = MetricsHandler.factory(registry)
    if probes is not None:
        base = _probe_handler(base, probes)
    # per-socket timeout, and the whole request within the same time (a slow client is dropped after timeout_s)
    handler = type("Handler", (_ReadDeadline, base), {"timeout": timeout_s, "read_deadline_s": timeout_s})
    server = CappedHTTPServer((host, port), handler, max_connections, log)
    t = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    t.start()
    return server, t
